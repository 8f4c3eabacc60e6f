"""``chexfusion zero-shot``: training-free class scores from a pretrained vision-language model.

Every image is scored for every class by the prompt ensemble of ``prompts.py``; every image of
a study then gets the study's score (``--aggregate``: max over its images by default, since a
study shows a finding when any of its views does; or the mean). The output is the predictions
CSV of ``chexfusion predict`` (one row per image), so ``evaluate`` scores it as it is.
"""

from __future__ import annotations

import sys

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("--vlm", required=True, metavar="SPEC",
                        help="the vision-language model: hf:ID_OR_FOLDER (CLIP / SigLIP style, tokenizer included) "
                        "or open_clip:ID_OR_FOLDER (BiomedCLIP, CheXzero)")
    parser.add_argument("--csv", required=True, help="CXR-LT style CSV: dicom_id, study_id, fpath (labels not needed)")
    parser.add_argument("--image-root", required=True, help="folder the CSV's fpath values are relative to")
    parser.add_argument("--out", required=True, help="predictions CSV to write")
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument("--classes", metavar="A,B", help="the class names to score (comma-separated)")
    names.add_argument("--classes-file", metavar="FILE", help="as --classes, one name per line ('#' comments)")
    parser.add_argument("--template", action="append", dest="templates", metavar="T",
                        help="positive prompt, '{}' is the finding (repeatable; default: '{}')")
    parser.add_argument("--negative-template", action="append", dest="negative_templates", metavar="T",
                        help="negative prompt (repeatable; default: 'no {}')")
    parser.add_argument("--no-synonyms", action="store_true",
                        help="fill the templates with the class name only, not its synonyms from the shipped table")
    parser.add_argument("--aggregate", choices=["max", "mean"], default="max",
                        help="a study's score from its images' (default max)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="skip missing or unreadable images (counted and reported; their rows are absent)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def class_embeddings(vlm, classes: list[str], cfg) -> tuple:
    """``[K, D]`` positive and negative ensemble embeddings of ``classes``."""
    import torch

    from .prompts import ensemble, prompt_sets

    positive, negative = [], []
    for name in classes:
        pos_texts, neg_texts = prompt_sets(name, cfg)
        positive.append(ensemble(vlm.encode_texts(pos_texts)))
        negative.append(ensemble(vlm.encode_texts(neg_texts)))
    return torch.stack(positive), torch.stack(negative)


def image_probabilities(vlm, table, image_root, positive, negative, args):
    """Rows read, their ``[N, K]`` probabilities and the rows skipped, in the CSV's study order."""
    import torch

    from ..data.image_dataset import ImageDataset, collate_images
    from ..feature_store.routing import study_ordered_rows
    from ..progress import tqdm
    from .prompts import pair_probabilities

    dataset = ImageDataset(table, image_root, vlm.preprocess, None, skip_bad_images=args.skip_bad_images,
                           rows=study_ordered_rows(table.frame))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_images)
    rows, probs, skipped = [], [], []
    for batch in tqdm(loader, desc="zero-shot", unit="batch"):
        skipped.extend(batch.get("skipped", []))
        if "image" in batch:
            probs.append(pair_probabilities(vlm.encode_images(batch["image"]), positive, negative,
                                            vlm.logit_scale).numpy())
            rows.append(batch["row"].numpy())
    k = positive.shape[0]
    return (np.concatenate(rows) if rows else np.zeros(0, np.int64),
            np.concatenate(probs) if probs else np.zeros((0, k), np.float32), skipped)


def run(args) -> int:
    import torch

    from ..data.cxr_lt import read_cxr_lt
    from ..errors import UserError
    from ..inference import aggregate_by_study
    from ..io import check_output_file
    from ..predict import requested_classes
    from ..predictions import write_predictions
    from .model import load_vlm
    from .prompts import DEFAULT_NEGATIVE_TEMPLATES, DEFAULT_TEMPLATES, PromptConfig

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    check_output_file(args.out)
    classes = requested_classes(args)
    cfg = PromptConfig(list(args.templates or DEFAULT_TEMPLATES),
                       list(args.negative_templates or DEFAULT_NEGATIVE_TEMPLATES), not args.no_synonyms)
    cfg.validate()
    table = read_cxr_lt(args.csv, classes=[])
    vlm = load_vlm(args.vlm, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    positive, negative = class_embeddings(vlm, classes, cfg)
    rows, probs, skipped = image_probabilities(vlm, table, args.image_root, positive, negative, args)
    frame = table.frame
    probs = aggregate_by_study(frame["study_id"].to_numpy()[rows], probs, args.aggregate)
    order = np.argsort(rows, kind="stable")  # write in the CSV's order
    rows, probs = rows[order], probs[order]
    write_predictions(args.out, frame["dicom_id"].to_numpy()[rows], frame["study_id"].to_numpy()[rows], classes,
                      np.clip(probs, 0.0, 1.0))
    print(f"wrote {len(rows)} zero-shot predictions ({len(classes)} classes, {args.vlm}) to {args.out}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable images (first: {frame['fpath'].iloc[skipped[0]]}); "
              f"their rows are not in {args.out}", file=sys.stderr)
    return 0
