#!/usr/bin/env bash
# The reference report reports/mnist-cpu/: vdvae-mnist against dctvae-mnist (Table 6 presets) trained on the
# 3,500 offline MNIST training digits (mnist-offline, no download) for a CPU budget, evaluated (importance-sampled
# NLL), attacked with the protocol of docs/protocol.md (attacks/figure10-mnist.toml: k = 1 .. L, L-inf eps 0.1) by
# the attack ensemble (--attack auto, i.e. auto-v2), its previous version (auto-v1) and the paper's attack (PGD on
# skl) on the same points, side by side in one report (a curve per model and attack: "dctvae-mnist · pgd on skl"
# beside "dctvae-mnist · auto-v1" and "dctvae-mnist · auto-v2"; the optimality-gap table compares each with the
# optimal context attack),
# DCT-VAE's context certified and attacked exactly (robustvae certify), and reported. Rerun from anywhere:
#
#     bash reports/make_mnist_cpu.sh
#
# Finished stages are kept when the script runs again (a trained model is reused, an attack run resumes), so a
# crash costs only the unfinished stage; FORCE=1 trains again from scratch. Settings come from the environment;
# the defaults are the reference settings:
#
#   EPOCHS=8            training budget per model (8 epochs = 216 steps of batch 128; on the 2-core build machine,
#                       one thread each, about 10 (vdvae-mnist) and 20 (dctvae-mnist) minutes)
#   POINTS=20 RESTARTS=3 STEPS=50   attack size per model and k (the suite's 50 points x 5 restarts cost 4x more)
#   IW_SAMPLES=1000     importance samples of the NLL (the paper's K for binary data)
#   EVAL_LIMIT=100      test images evaluated, label-stratified (empty: the whole 1,000-image test split)
#   RUNS=runs/mnist-cpu where models, evaluation, attack and certify records go;  OUT=reports/mnist-cpu  the report
#   VDVAE=vdvae-mnist DCTVAE=dctvae-mnist   presets;  TRAIN_ARGS= / ATTACK_ARGS=  extra options for train / attack
#   FINDINGS=reports/mnist-cpu-findings.md  text shown in the report when the file exists (what it reproduces)
#   PYTHON=python       the interpreter that runs "python -m robustvae"
#
# The two attacks run side by side, one thread each; then the evaluation and the certification. The exact commands
# and their wall times are written to $RUNS/commands.txt and shown in the report.
set -euo pipefail
cd "$(dirname "$0")/.."

EPOCHS=${EPOCHS:-8}
POINTS=${POINTS:-20}
RESTARTS=${RESTARTS:-3}
STEPS=${STEPS:-50}
IW_SAMPLES=${IW_SAMPLES:-1000}
EVAL_LIMIT=${EVAL_LIMIT:-100}
RUNS=${RUNS:-runs/mnist-cpu}
OUT=${OUT:-reports/mnist-cpu}
VDVAE=${VDVAE:-vdvae-mnist}
DCTVAE=${DCTVAE:-dctvae-mnist}
TRAIN_ARGS=${TRAIN_ARGS:-}
ATTACK_ARGS=${ATTACK_ARGS:-}
FINDINGS=${FINDINGS:-reports/mnist-cpu-findings.md}
PYTHON=${PYTHON:-python}
FORCE=${FORCE:-0}

mkdir -p "$RUNS"
NOTES="$RUNS/commands.txt"
{
  echo "Produced by reports/make_mnist_cpu.sh on $(date -u +%Y-%m-%dT%H:%MZ), git commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo "Budget: EPOCHS=$EPOCHS${TRAIN_ARGS:+ (train options: $TRAIN_ARGS)} per model on mnist-offline (3,500 training digits),"
  cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //' || true)
  echo "CPU only: $(nproc --all) cores (${cpu:-unknown CPU}); NLL with K=$IW_SAMPLES."
  echo "Commands, each followed by its wall time (a stage already done is marked as reused):"
  echo
} > "$NOTES"

# run COMMAND...: echo it into the notes, run it, note its wall time
source reports/notes.sh

rv=("$PYTHON" -m robustvae)
models=()
for preset in "$VDVAE" "$DCTVAE"; do
  dir="$RUNS/$preset"
  models+=("$dir")
  if [[ "$FORCE" != 1 && -f "$dir/summary.json" ]]; then
    echo "robustvae train --preset $preset ... --out $dir    # reused: $dir/summary.json exists" >> "$NOTES"
    continue
  fi
  # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
  run "${rv[@]}" train --preset "$preset" --data mnist-offline --epochs "$EPOCHS" --out "$dir" --force -q $TRAIN_ARGS
done

eval_file="$RUNS/eval-test.json"
limit=()
[[ -n "$EVAL_LIMIT" ]] && limit=(--limit "$EVAL_LIMIT")
if [[ "$FORCE" != 1 && -f "$eval_file" && "$eval_file" -nt "$RUNS/$VDVAE/best.pt" && "$eval_file" -nt "$RUNS/$DCTVAE/best.pt" ]]; then
  echo "robustvae eval ... --out $eval_file    # reused: newer than both checkpoints" >> "$NOTES"
else
  run "${rv[@]}" eval "${models[@]}" --iw-samples "$IW_SAMPLES" "${limit[@]}" --out "$eval_file" -q
fi

# the protocol from the suite, its model list replaced by the models trained above and its size by POINTS etc.;
# the ensemble and the paper's attack side by side, one thread each
if [[ "$FORCE" == 1 ]]; then  # records of the old checkpoints would not match the new ones
  rm -rf "$RUNS/attack-auto" "$RUNS/attack-auto-v1" "$RUNS/attack-pgd" "$RUNS/certify"
fi
pids=()
t0=$SECONDS
for att in auto auto-v1 pgd; do
  cmd=("${rv[@]}" attack "${models[@]}" --suite attacks/figure10-mnist.toml --attack "$att" --points "$POINTS"
       --restarts "$RESTARTS" --steps "$STEPS" --out "$RUNS/attack-$att" -q)
  # shellcheck disable=SC2206  # ATTACK_ARGS is a list of options
  cmd+=($ATTACK_ARGS)
  echo "OMP_NUM_THREADS=1 ${cmd[*]} > $RUNS/attack-$att.md &" >> "$NOTES"
  echo "+ ${cmd[*]}" >&2
  OMP_NUM_THREADS=1 "${cmd[@]}" > "$RUNS/attack-$att.md" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo "    # both attacks side by side: $((SECONDS - t0)) s" >> "$NOTES"

# DCT-VAE's quantised context: certified radius and the optimal context attack on the same points
run "${rv[@]}" certify "$RUNS/$DCTVAE" --eps 0.1 --norm linf --points "$POINTS" --out "$RUNS/certify" -q

# both attacks in one report: a curve per model and attack in Figure 10, the tables and the checks
notes=(--notes "$NOTES")
[[ -f "$FINDINGS" ]] && notes+=(--notes "$FINDINGS")
echo "${rv[*]} report $RUNS/attack-auto $RUNS/attack-auto-v1 $RUNS/attack-pgd $RUNS/certify --eval $eval_file ${notes[*]} --out $OUT --force" >> "$NOTES"
"${rv[@]}" report "$RUNS/attack-auto" "$RUNS/attack-auto-v1" "$RUNS/attack-pgd" "$RUNS/certify" --eval "$eval_file" "${notes[@]}" --out "$OUT" \
  --force --title "robustvae reference report: $VDVAE vs $DCTVAE on offline MNIST, CPU budget of $EPOCHS epochs"
