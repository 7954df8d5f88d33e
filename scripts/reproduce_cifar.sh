#!/usr/bin/env bash
# The QUANTA paper's full protocol (Orhand et al., KES 2021, section 4.1) on CIFAR-10 → CIFAR-100.
#
# For users with the CIFAR data and a GPU. It was NOT run by the quanta-probe authors: our machine has
# neither CIFAR nor a GPU, so docs/reproduction.md reports no CIFAR numbers. The paper reports, averaged
# over all layers, a target top-1 of about 0.849 for AnA (source test top-1 0.84) and 0.574 for AnB.
#
#   source: paper CNN trained 60 epochs on CIFAR-10, Adam lr 1e-4, weight decay 1e-6, batch 32, augmentation
#   scan:   7 layers × λS inits 0.9 / 0.75 / 0.5 × AnB (CIFAR-100) and AnA (CIFAR-10) × 30 runs, 60 epochs each,
#           same optimiser; the gate learns at the same rate as the weights (gate lr = lr = 1e-4, the paper exactly:
#           --preset paper); finals = mean of the last 10 epochs, then mean ± std over the runs
#
# Why the paper's gate lr here and not the default preset (docs/protocol.md): what decides whether λS measures
# anything is the gate budget, the gate's lr summed over the steps (with a target slow enough for the gate to
# decide). 60 CIFAR epochs of batch 32 are ~94,000 steps, so the paper's constant 1e-4 is a budget of ~9.4,
# inside the range that moved λS on digits (8.3-27.6 at target lr 1e-4), and it is the setting whose CIFAR
# figures the paper published. GATE_BUDGET=13.85 with LR_SCHEDULE=cosine gives the default protocol instead
# (the digits budget; both lrs on a cosine, gate peak ≈ 3.0e-4 over those steps), to compare.
#   beside: Yosinski transfer accuracy (AnB, AnB+, AnA, AnA+, target alone), LogME, H-score per layer
#
# That is 1,260 QUANTA trainings and 900 baseline trainings of 60 epochs on 50,000 images: days of GPU time.
# Measure the first run with the progress display and scale RUNS down if needed (results stay comparable as
# mean ± std; the paper used 30). Re-running the same command resumes an interrupted scan.
#
# Usage: scripts/reproduce_cifar.sh  (environment: OUT, DATA_DIR, RUNS, EPOCHS, DEVICE, JOBS, BASELINES, GATE_BUDGET,
#        LR_SCHEDULE)
set -euo pipefail

OUT=${OUT:-results/cifar}
DATA_DIR=${DATA_DIR:-${PROBE_DATA:-$HOME/.cache/quanta-probe/data}}
RUNS=${RUNS:-30}
EPOCHS=${EPOCHS:-60}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-1}
BASELINES=${BASELINES:-yosinski,logme,hscore}
GATE=(--gate-lr 1e-4)
if [ -n "${GATE_BUDGET:-}" ]; then GATE=(--gate-budget "$GATE_BUDGET"); fi
if [ -n "${LR_SCHEDULE:-}" ]; then GATE+=(--lr-schedule "$LR_SCHEDULE"); fi

mkdir -p "$OUT"
SOURCE="$OUT/cifar10-source.pt"

# 1. The source (skipped when it exists: delete it to retrain). --download fetches CIFAR-10/100 into DATA_DIR.
if [ ! -f "$SOURCE" ]; then
  probe train --arch paper-cnn --data cifar10 --epochs "$EPOCHS" --lr 1e-4 --batch-size 32 \
    --device "$DEVICE" --data-dir "$DATA_DIR" --download --out "$SOURCE"
fi

# 2. λS at every layer for AnB (CIFAR-100) and the AnA control (CIFAR-10), the three inits, with the baselines.
probe scan --source "$SOURCE" --target cifar100 --control \
  --preset paper --init 0.9,0.75,0.5 --runs "$RUNS" --epochs "$EPOCHS" --lr 1e-4 "${GATE[@]}" --batch-size 32 \
  --baselines "$BASELINES" --device "$DEVICE" --jobs "$JOBS" --data-dir "$DATA_DIR" --download \
  --out "$OUT/scan"

# 3. The table, the rank correlations and the figures (transferability.png, dynamics.png, comparison.png).
probe report "$OUT/scan"
echo "paper (Orhand et al. 2021): target top-1 averaged over layers AnA ≈ 0.849, AnB ≈ 0.574; source ≈ 0.84"
