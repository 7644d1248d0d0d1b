#!/usr/bin/env bash
# The Defences section for the MNIST reference models (docs/defences.md): vdvae-mnist and dctvae-mnist attacked
# three ways on the same points (attacks/defences-mnist.toml: k = 1 .. 4, L-inf eps 0.1): undefended, defended by
# the HMC defence with the attack on the model (non-adaptive), and with the attack through the chain (adaptive);
# then one report. Rerun from anywhere:
#
#     bash reports/make_defences_mnist.sh
#
# An attack run resumes when the script runs again (finished units are kept). Settings come from the environment:
#
#   MODELS="runs/mnist-cpu/vdvae-mnist runs/mnist-cpu/dctvae-mnist"   trained run directories (reports/make_mnist_cpu.sh)
#   HMC_STEPS=6 HMC_LEAPFROG=3 EOT=2   the defence's chain and the adaptive attack's chain draws (sized for a 2-core
#                       CPU; the library's defaults are 20, 5 and 4)
#   RUNS=runs/defences-mnist  where the attack records go;  OUT=reports/defences-mnist  the report
#   DEVICE=auto  ATTACK_ARGS=  extra options for every attack (e.g. --attack pgd, --points 20, --max-batch-mib 60000)
#   PYTHON=python  the interpreter that runs "python -m robustvae";  REPORT=1  write the report (0: the runs only)
#   FINDINGS=reports/defences-mnist-findings.md  text shown in the report when the file exists (what it shows)
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=${MODELS:-runs/mnist-cpu/vdvae-mnist runs/mnist-cpu/dctvae-mnist}
HMC_STEPS=${HMC_STEPS:-6}
HMC_LEAPFROG=${HMC_LEAPFROG:-3}
EOT=${EOT:-2}
RUNS=${RUNS:-runs/defences-mnist}
OUT=${OUT:-reports/defences-mnist}
DEVICE=${DEVICE:-auto}
ATTACK_ARGS=${ATTACK_ARGS:-}
PYTHON=${PYTHON:-python}
REPORT=${REPORT:-1}
FINDINGS=${FINDINGS:-reports/defences-mnist-findings.md}

mkdir -p "$RUNS"
NOTES="$RUNS/commands.txt"
{
  echo "Produced by reports/make_defences_mnist.sh on $(date -u +%Y-%m-%dT%H:%MZ), git commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo "Device: $DEVICE. Commands, each followed by its wall time:"
  echo
} > "$NOTES"

# run COMMAND...: echo it into the notes, run it, note its wall time
source reports/notes.sh

rv=("$PYTHON" -m robustvae)
hmc=(--defence hmc --hmc-steps "$HMC_STEPS" --hmc-leapfrog "$HMC_LEAPFROG")
# shellcheck disable=SC2086  # MODELS and ATTACK_ARGS are lists
run "${rv[@]}" attack $MODELS --suite attacks/defences-mnist.toml --device "$DEVICE" --out "$RUNS/undefended" -q $ATTACK_ARGS
# shellcheck disable=SC2086
run "${rv[@]}" attack $MODELS --suite attacks/defences-mnist.toml --device "$DEVICE" "${hmc[@]}" --out "$RUNS/hmc" -q $ATTACK_ARGS
# shellcheck disable=SC2086
run "${rv[@]}" attack $MODELS --suite attacks/defences-mnist.toml --device "$DEVICE" "${hmc[@]}" --adaptive --eot "$EOT" \
  --out "$RUNS/hmc-adaptive" -q $ATTACK_ARGS
if [[ "$REPORT" == 1 ]]; then
  findings=()
  [[ -f "$FINDINGS" ]] && findings=(--notes "$FINDINGS")
  run "${rv[@]}" report "$RUNS/undefended" "$RUNS/hmc" "$RUNS/hmc-adaptive" --notes "$NOTES" "${findings[@]}" --out "$OUT" --force
fi
