import numpy as np
import pytest
import torch
from PIL import Image

from chexfusion.data.cxr_lt import read_cxr_lt
from chexfusion.data.image_dataset import ImageDataset, collate_images, is_skipped
from chexfusion.data.images import ImageError, Preprocess
from chexfusion.data.labels import LabelPolicy

PRE = Preprocess(image_size=16)
HEADER = "dicom_id,subject_id,study_id,ViewPosition,ViewCodeSequence_CodeMeaning,fpath"


@pytest.fixture
def dataset_dir(tmp_path):
    """Four images: a bright frontal, a dark lateral, an unknown view, and one whose file is missing."""
    (tmp_path / "img").mkdir()
    Image.new("L", (20, 24), 255).save(tmp_path / "img" / "a.jpg")
    Image.new("L", (20, 24), 0).save(tmp_path / "img" / "b.png")
    Image.new("L", (20, 24), 128).save(tmp_path / "img" / "c.png")
    rows = ["a,p1,s1,PA,,img/a.jpg,1,-1", "b,p1,s1,LL,,img/b.png,0,", "c,p2,s2,,,img/c.png,-1,1",
            "d,p2,s2,AP,,img/missing.jpg,1,1"]
    (tmp_path / "train.csv").write_text("\n".join([HEADER + ",Edema,Fracture", *rows]) + "\n")
    (tmp_path / "test.csv").write_text("\n".join([HEADER, *[r.rsplit(",", 2)[0] for r in rows]]) + "\n")
    return tmp_path


def test_items_carry_image_targets_mask_row_and_view(dataset_dir):
    table = read_cxr_lt(dataset_dir / "train.csv")
    data = ImageDataset(table, dataset_dir, PRE, LabelPolicy(uncertain="ignore", blank="one"))
    assert len(data) == 4
    first, second = data[0], data[1]
    assert first["image"].shape == (3, 16, 16) and first["image"].dtype == torch.float32
    assert torch.allclose(first["image"][0], torch.full((16, 16), (1 - PRE.mean[0]) / PRE.std[0]), atol=1e-5)
    assert torch.allclose(second["image"][0], torch.full((16, 16), -PRE.mean[0] / PRE.std[0]), atol=1e-5)
    assert first["target"].tolist() == [1, 0] and first["mask"].tolist() == [1, 0]
    assert second["target"].tolist() == [0, 1] and second["mask"].tolist() == [1, 1]
    assert (first["row"], second["row"], data[2]["row"]) == (0, 1, 2)
    assert (first["view"], second["view"], data[2]["view"]) == (0, 1, 2)


def test_rows_select_a_subset_in_order(dataset_dir):
    table = read_cxr_lt(dataset_dir / "train.csv")
    data = ImageDataset(table, dataset_dir, PRE, rows=np.array([2, 0]))
    assert len(data) == 2
    assert data[0]["row"] == 2 and data[1]["row"] == 0
    assert data[0]["target"].tolist() == [0, 1]  # default policy: -1 -> 0
    with pytest.raises(IndexError):
        ImageDataset(table, dataset_dir, PRE, rows=np.array([4]))


def test_unlabelled_table_gives_images_only(dataset_dir):
    data = ImageDataset(read_cxr_lt(dataset_dir / "test.csv"), dataset_dir, PRE)
    item = data[0]
    assert "target" not in item and "mask" not in item and item["image"].shape == (3, 16, 16)


def test_transform_is_applied_to_the_normalized_tensor(dataset_dir):
    seen = []

    def transform(image):
        seen.append(image.clone())
        return image.flip(-1) * 0

    data = ImageDataset(read_cxr_lt(dataset_dir / "train.csv"), dataset_dir, PRE, transform=transform)
    assert torch.count_nonzero(data[0]["image"]) == 0
    assert seen[0].shape == (3, 16, 16) and seen[0].max() > 2  # normalized white, not [0, 1]


def test_bad_image_stops_the_run_by_default(dataset_dir):
    data = ImageDataset(read_cxr_lt(dataset_dir / "train.csv"), dataset_dir, PRE)
    with pytest.raises(ImageError, match=r"missing.jpg: file not found"):
        data[3]


def test_skipped_images_are_dropped_and_listed_by_collate(dataset_dir):
    data = ImageDataset(read_cxr_lt(dataset_dir / "train.csv"), dataset_dir, PRE, skip_bad_images=True)
    marker = data[3]
    assert is_skipped(marker) and marker["row"] == 3 and "missing.jpg" in marker["error"]
    loader = torch.utils.data.DataLoader(data, batch_size=4, collate_fn=collate_images)
    (batch,) = list(loader)
    assert batch["image"].shape == (3, 3, 16, 16)
    assert batch["row"].tolist() == [0, 1, 2] and batch["view"].tolist() == [0, 1, 2]
    assert batch["target"].shape == (3, 2) and batch["mask"].shape == (3, 2)
    assert batch["skipped"] == [3] and "missing.jpg" in batch["skipped_errors"][0]


def test_collate_of_an_all_skipped_batch_and_of_none(dataset_dir):
    data = ImageDataset(read_cxr_lt(dataset_dir / "train.csv"), dataset_dir, PRE, skip_bad_images=True)
    batch = collate_images([data[3], None])
    assert "image" not in batch and batch["row"].numel() == 0
    assert batch["skipped"] == [3, -1]


def test_bad_image_in_a_worker_process_is_still_one_line(dataset_dir):
    data = ImageDataset(read_cxr_lt(dataset_dir / "train.csv"), dataset_dir, PRE, rows=np.array([3]))
    loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=1, collate_fn=collate_images)
    with pytest.raises(ImageError) as err:
        list(loader)
    assert str(err.value) == f"cannot read image {dataset_dir / 'img' / 'missing.jpg'}: file not found"
