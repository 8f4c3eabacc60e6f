# chexfusion: the pipeline as make targets.
#   make stage1 stage2   install (once), build the demo data, train both stages, print metrics
#   make test            the test suite
# Every target installs into .venv first if needed; the stamp file makes that a no-op later.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install
CX     := $(BIN)/chexfusion

DATA_DIR     ?= data/demo
DATA_STUDIES ?= 1500
DATA_SEED    ?= 0
DATA_STAMP   := $(DATA_DIR)/.complete
STAGE1_CONFIG ?= stage1/config.yaml
STAGE2_CONFIG ?= stage2/config.yaml
STAGE1_RUN    ?= stage1/runs/demo
STAGE2_RUN    ?= stage2/runs/demo

.PHONY: install data stage1 features stage2 evaluate ablate loss-study compare text-queries zero-shot zero-shot-vlm zero-shot-vlm-seeds cxr-lt-2026 localize test test-browser bench gpu-check clean-runs help

help:
	@sed -n '2,4p' Makefile

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

data: $(DATA_STAMP)

$(DATA_STAMP): $(STAMP)
	$(CX) synth --out $(DATA_DIR) --studies $(DATA_STUDIES) --seed $(DATA_SEED)
	touch $(DATA_STAMP)

stage1: $(DATA_STAMP)
	$(CX) stage1 --config $(STAGE1_CONFIG)
	$(CX) calibrate --model $(STAGE1_RUN)

features: $(DATA_STAMP)
	$(CX) features --config $(STAGE2_CONFIG)

stage2: features
	$(CX) stage2 --config $(STAGE2_CONFIG)
	$(CX) calibrate --model $(STAGE2_RUN)

# Seed 004's ChestX-ray14 recipe, scaled down, on the synthetic NIH-format set (docs/recipes.md): split 70/10/20 by
# patient, then stage 1 with L_ours (re-weighted) and with L_WBCE (ratio-weighted BCE).
.PHONY: nih-004-demo
nih-004-demo: $(DATA_STAMP)
	$(CX) convert --format nih --labels $(DATA_DIR)/external/nih/Data_Entry_2017.csv \
		--image-root $(DATA_DIR)/external/nih --out $(DATA_DIR)/nih-004
	$(CX) stage1 --config stage1/chestxray14-004-demo.yaml
	$(CX) stage1 --config stage1/chestxray14-004-demo.yaml name=chestxray14-004-demo-wbce \
		loss.name=weighted_bce 'loss.params={weights: ratio}'
ABLATE_LOSSES ?= bce,focal,asl,weighted_asl
ablate: $(DATA_STAMP)
	$(CX) ablate --stage1-config $(STAGE1_CONFIG) --stage2-config $(STAGE2_CONFIG) \
		--losses $(ABLATE_LOSSES)

# The loss study (docs/ablations.md): each loss through both stages over seeds, at a reduced schedule so that the
# seven losses x 3 seeds fit in about 90 minutes on 2 cores. Runs are named <name>-loss-<loss>-seed<S> and reused.
LOSS_STUDY_LOSSES ?= bce,weighted_bce,focal,asl,weighted_asl,ral,reweighted
LOSS_STUDY_SEEDS  ?= 0,1,2
LOSS_STUDY_STAGE1 ?= --stage1-set data.image_size=64 --stage1-set train.epochs=1
LOSS_STUDY_STAGE2 ?= --stage2-set train.epochs=4
loss-study: $(DATA_STAMP)
	$(CX) ablate --study losses --stage1-config $(STAGE1_CONFIG) --stage2-config $(STAGE2_CONFIG) \
		--losses $(LOSS_STUDY_LOSSES) --seeds $(LOSS_STUDY_SEEDS) $(LOSS_STUDY_STAGE1) $(LOSS_STUDY_STAGE2)

# Heat maps scored against where synth drew each finding (docs/explanations.md): both demo runs, every method, on
# the test split and the findings the 6-epoch demo model learns (docs/synthetic.md, "Learnability").
LOCALIZE_CLASSES ?= Cardiomegaly,Edema,Lobar Atelectasis,Consolidation,Pleural Effusion
localize: $(DATA_STAMP)
	mkdir -p reports
	for stage in stage1 stage2; do \
		$(CX) localize --model $$stage/runs/demo --csv $(DATA_DIR)/test.csv --image-root $(DATA_DIR) \
			--regions $(DATA_DIR)/test_regions.csv --classes "$(LOCALIZE_CLASSES)" --json \
			> reports/localize-$$stage.txt || exit 1; \
		cat reports/localize-$$stage.txt; \
	done

# Shared vs per-view stage 2 on the demo test split with paired tests (docs/evaluation.md): trains what make ablate
# trains when missing, predicts with both run folders, then compares them.
COMPARE_OUT      ?= reports/compare
COMPARE_SHARED   ?= stage2/runs/demo
COMPARE_PER_VIEW ?= stage2/runs/demo-per-view
compare: $(DATA_STAMP)
	$(CX) ablate --stage1-config $(STAGE1_CONFIG) --stage2-config $(STAGE2_CONFIG)
	$(CX) predict --model $(COMPARE_SHARED) --csv $(DATA_DIR)/test.csv --image-root $(DATA_DIR) \
		--out $(COMPARE_OUT)/shared.csv
	$(CX) predict --model $(COMPARE_PER_VIEW) --csv $(DATA_DIR)/test.csv --image-root $(DATA_DIR) \
		--out $(COMPARE_OUT)/per-view.csv
	$(CX) compare --pred $(COMPARE_OUT)/shared.csv --pred $(COMPARE_OUT)/per-view.csv --names shared,per-view \
		--labels $(DATA_DIR)/test.csv --train-labels $(DATA_DIR)/train.csv --out $(COMPARE_OUT)

# Stage 2 with class-name (text) queries on the demo feature store (after make stage2): compare with learned queries.
text-queries: features
	$(CX) stage2 --config stage2/text-queries.yaml

# Zero-shot protocol (docs/zero_shot.md): train both stages with text queries WITHOUT three findings, then score
# them by name on an independent synthetic cohort (another seed, every split: enough positives of the rare ones)
# and evaluate them. ZERO_SHOT_SEED=1 make zero-shot repeats it with other weights.
ZERO_SHOT_CLASSES := Hydropneumothorax,Lobar Atelectasis,Consolidation
ZERO_SHOT_SEED    ?= 0
ZERO_SHOT_RUN     := zero-shot-seed$(ZERO_SHOT_SEED)
ZERO_SHOT_OUT     := stage2/runs/$(ZERO_SHOT_RUN)/held-out
ZERO_SHOT_DATA    ?= data/zero-shot-eval
ZERO_SHOT_STAMP   := $(ZERO_SHOT_DATA)/.complete
ZERO_SHOT_FEATURES := features.store=features/$(ZERO_SHOT_RUN) features.shared_backbone=stage1/runs/$(ZERO_SHOT_RUN)

$(ZERO_SHOT_STAMP): $(STAMP)
	$(CX) synth --out $(ZERO_SHOT_DATA) --studies 4000 --seed 1 --external-images 0
	awk 'FNR > 1 || NR == 1' $(ZERO_SHOT_DATA)/train.csv $(ZERO_SHOT_DATA)/development.csv \
		$(ZERO_SHOT_DATA)/test.csv > $(ZERO_SHOT_DATA)/all.csv.tmp
	mv $(ZERO_SHOT_DATA)/all.csv.tmp $(ZERO_SHOT_DATA)/all.csv
	touch $(ZERO_SHOT_STAMP)

zero-shot: $(DATA_STAMP) $(ZERO_SHOT_STAMP)
	$(CX) stage1 --config stage1/zero-shot.yaml seed=$(ZERO_SHOT_SEED) name=$(ZERO_SHOT_RUN)
	$(CX) features --config stage2/zero-shot.yaml $(ZERO_SHOT_FEATURES)
	$(CX) stage2 --config stage2/zero-shot.yaml seed=$(ZERO_SHOT_SEED) name=$(ZERO_SHOT_RUN) $(ZERO_SHOT_FEATURES)
	$(CX) predict --model stage2/runs/$(ZERO_SHOT_RUN) --csv $(ZERO_SHOT_DATA)/all.csv --image-root $(ZERO_SHOT_DATA) \
		--classes "$(ZERO_SHOT_CLASSES)" --out $(ZERO_SHOT_OUT)/predictions.csv
	$(CX) evaluate --pred $(ZERO_SHOT_OUT)/predictions.csv --labels $(ZERO_SHOT_DATA)/all.csv \
		--train-labels $(DATA_DIR)/train.csv --classes "$(ZERO_SHOT_CLASSES)" --out $(ZERO_SHOT_OUT)

# The same protocol for models trained on report text (docs/zero_shot.md, "Vision-language models"): plain CLIP
# and CXR-CML (chexfusion clip), the held-out findings' sentences removed from their reports, score the three
# names by prompts on the same cohort, beside make zero-shot's text-query run. Last line: one JSON object.
ZERO_SHOT_VLM_RUNS := clip-zero-shot-seed$(ZERO_SHOT_SEED) clip-cml-zero-shot-seed$(ZERO_SHOT_SEED)

zero-shot-vlm: zero-shot
	$(CX) clip --config stage1/clip-zero-shot.yaml seed=$(ZERO_SHOT_SEED) name=clip-zero-shot-seed$(ZERO_SHOT_SEED)
	$(CX) clip --config stage1/clip-cml-zero-shot.yaml seed=$(ZERO_SHOT_SEED) \
		name=clip-cml-zero-shot-seed$(ZERO_SHOT_SEED)
	for run in $(ZERO_SHOT_VLM_RUNS); do \
		$(CX) predict --model stage1/runs/$$run --csv $(ZERO_SHOT_DATA)/all.csv --image-root $(ZERO_SHOT_DATA) \
			--aggregate max --classes "$(ZERO_SHOT_CLASSES)" --out stage1/runs/$$run/held-out/predictions.csv && \
		$(CX) evaluate --pred stage1/runs/$$run/held-out/predictions.csv --labels $(ZERO_SHOT_DATA)/all.csv \
			--train-labels $(DATA_DIR)/train.csv --classes "$(ZERO_SHOT_CLASSES)" \
			--out stage1/runs/$$run/held-out || exit 1; \
	done
	$(BIN)/python -m chexfusion.clip.summary \
		--method text_queries=$(ZERO_SHOT_OUT),stage2/runs/$(ZERO_SHOT_RUN) \
		--method clip=stage1/runs/clip-zero-shot-seed$(ZERO_SHOT_SEED)/held-out,stage1/runs/clip-zero-shot-seed$(ZERO_SHOT_SEED) \
		--method cxr_cml=stage1/runs/clip-cml-zero-shot-seed$(ZERO_SHOT_SEED)/held-out,stage1/runs/clip-cml-zero-shot-seed$(ZERO_SHOT_SEED)

# The protocol over seeds 0-2 (docs/zero_shot.md): each seed's runs, then every figure's mean and spread and each
# pair of methods' paired difference, seed by seed. Last line: one JSON object.
ZERO_SHOT_SEEDS ?= 0 1 2
ZERO_SHOT_SEED_LIST := $(shell echo $(ZERO_SHOT_SEEDS) | tr ' ' ',')

zero-shot-vlm-seeds: $(DATA_STAMP) $(ZERO_SHOT_STAMP)
	for seed in $(ZERO_SHOT_SEEDS); do $(MAKE) --no-print-directory zero-shot-vlm ZERO_SHOT_SEED=$$seed || exit 1; done
	$(BIN)/python -m chexfusion.clip.summary --seeds $(ZERO_SHOT_SEED_LIST) \
		--method 'text_queries=stage2/runs/zero-shot-seed{seed}/held-out,stage2/runs/zero-shot-seed{seed}' \
		--method 'clip=stage1/runs/clip-zero-shot-seed{seed}/held-out,stage1/runs/clip-zero-shot-seed{seed}' \
		--method 'cxr_cml=stage1/runs/clip-cml-zero-shot-seed{seed}/held-out,stage1/runs/clip-cml-zero-shot-seed{seed}'

# CXR-LT 2026 on its synthetic twin (docs/cxr_lt_2026.md): the challenge layout -> convert -> stage 1 -> features
# -> stage 2 (text queries) -> a submission per task on the test CSV -> evaluate against the held labels; and the
# stage-1 single-image submission of Task 1 beside it (how every 2026 team worked).
CXR26_DIR     ?= data/cxr-lt-2026
CXR26_STUDIES ?= 1200
CXR26_CONV    := $(CXR26_DIR)/converted
CXR26_STAMP   := $(CXR26_DIR)/.complete
CXR26_RUN     := cxr-lt-2026-demo
CXR26_OUT     := stage2/runs/$(CXR26_RUN)/challenge
CXR26_CONVERT  = $(CX) convert --format cxr-lt-2026 --image-root $(CXR26_DIR)/images \
	--padchest-metadata $(CXR26_DIR)/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv
CXR26_PREDICT  = $(CX) predict --csv $(CXR26_CONV)/test.csv --image-root $(CXR26_DIR)/images
CXR26_EVALUATE = $(CX) evaluate --train-labels $(CXR26_CONV)/train.csv

$(CXR26_STAMP): $(STAMP)
	$(CX) synth --out $(CXR26_DIR) --studies $(CXR26_STUDIES) --label-set cxr-lt-2026 --seed $(DATA_SEED)
	$(CXR26_CONVERT) --labels $(CXR26_DIR)/CXRLT_2026_training.csv --removal $(CXR26_DIR)/Removal.csv \
		--out $(CXR26_CONV)/train.csv
	$(CXR26_CONVERT) --labels $(CXR26_DIR)/CXRLT_2026_validation.csv --out $(CXR26_CONV)/validation.csv
	$(CXR26_CONVERT) --labels $(CXR26_DIR)/CXRLT_2026_TEST_ALL_TASK1.csv --out $(CXR26_CONV)/test.csv
	$(CXR26_CONVERT) --labels $(CXR26_DIR)/held_labels/task1.csv --out $(CXR26_CONV)/test_task1_labels.csv
	touch $(CXR26_STAMP)

cxr-lt-2026: $(CXR26_STAMP)
	$(CX) stage1 --config stage1/$(CXR26_RUN).yaml
	$(CX) features --config stage2/$(CXR26_RUN).yaml
	$(CX) stage2 --config stage2/$(CXR26_RUN).yaml
	$(CXR26_PREDICT) --model stage1/runs/$(CXR26_RUN) --submission cxr-lt-2026-task1 --out $(CXR26_OUT)/stage1-task1.csv
	$(CXR26_PREDICT) --model stage2/runs/$(CXR26_RUN) --submission cxr-lt-2026-task1 --out $(CXR26_OUT)/stage2-task1.csv
	$(CXR26_PREDICT) --model stage2/runs/$(CXR26_RUN) --submission cxr-lt-2026-task2 --out $(CXR26_OUT)/stage2-task2.csv
	@echo "== Task 1, stage 1 (single images) =="
	$(CXR26_EVALUATE) --task cxr-lt-2026-1 --pred $(CXR26_OUT)/stage1-task1.csv --labels $(CXR26_DIR)/held_labels/task1.csv \
		--out $(CXR26_OUT)/stage1-task1
	@echo "== Task 1, stage 2 (a study's views fused) =="
	$(CXR26_EVALUATE) --task cxr-lt-2026-1 --pred $(CXR26_OUT)/stage2-task1.csv --labels $(CXR26_DIR)/held_labels/task1.csv \
		--out $(CXR26_OUT)/stage2-task1
	@echo "== Task 2 (six unseen findings scored by name), stage 2 =="
	$(CXR26_EVALUATE) --task cxr-lt-2026-2 --pred $(CXR26_OUT)/stage2-task2.csv --labels $(CXR26_DIR)/held_labels/task2.csv \
		--out $(CXR26_OUT)/stage2-task2

test: $(STAMP)
	$(BIN)/ruff check chexfusion tests benchmarks
	$(BIN)/python -m pytest -q

test-browser: $(STAMP)
	bash tests/browser/setup.sh
	$(BIN)/python -m pytest -q -m browser tests/browser

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# GPU readiness (benchmarks/gpu_check.py): the full recipe on one CUDA device, reduced in steps, against bare loops;
# last line one JSON object. Without CUDA it says so in one line and exits 0. GPU_CHECK_ARGS: e.g.
# --stage1-override train.channels_last=true
GPU_CHECK_ARGS ?=
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean-runs:
	rm -rf stage1/runs stage2/runs features/*/ 
