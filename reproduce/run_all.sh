#!/usr/bin/env bash
# The cpu-preset reproduction, every script, both models, results into reproduce/results/<model>/<script>/.
# Run it on an IDLE machine (other jobs on the 2 cores make every step several times slower, and the
# measured times are part of the results):
#
#     bash reproduce/run_all.sh                      # both models: Gemma 3 270M base, then SmolLM2-135M-Instruct
#     FAMILIES=base bash reproduce/run_all.sh        # one model
#     THREADS=1 bash reproduce/run_all.sh            # a machine shared with other jobs (2 threads spin there)
#     RERUN=1 bash reproduce/run_all.sh              # also the scripts whose result_cpu.json exists (skipped
#                                                    # otherwise, so a run can be split over several sittings)
#
# Order: the judge (once, shared by both models), then per model: the learning-rate pilot (its chosen lr is
# passed to every training script with --lr; it also predicts each script's time and the most pairs that fit
# 30 minutes, passed with --train-pairs / --heldout-pairs and recorded in each JSON's settings), the training
# scripts, the two cheap scripts, the win rate. Each script's wall time is printed and appended to
# reproduce/results/run_all_times.txt; the README table comes from `python reproduce/summarize.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
FAMILIES=${FAMILIES:-"base instruct"}
THREADS=${THREADS:-2}
TIMES=reproduce/results/run_all_times.txt
mkdir -p reproduce/results
echo "# run_all.sh $(date -u +%FT%TZ) on $(nproc) cores, THREADS=$THREADS, load $(cut -d' ' -f1 /proc/loadavg)" >> "$TIMES"

run() {  # run TAG SCRIPT ARGS...: one script, its wall time printed and logged; TAG: its results/<model> folder
    local tag=$1 script=$2; shift 2
    if [[ -z ${RERUN:-} && -f reproduce/results/$tag/$script/result_cpu.json ]]; then  # split over several sittings
        echo "=== $script $*: results/$tag/$script/result_cpu.json exists, skipped (RERUN=1 runs it again)"
        return
    fi
    local t0=$SECONDS
    echo "=== $script $*"
    python "reproduce/$script.py" --results --threads "$THREADS" "$@"
    local dt=$((SECONDS - t0))
    echo "=== $script $*: $dt s ($((dt / 60)) min)"
    echo "$script $*: $dt s" >> "$TIMES"
}

run smollm2-135m-instruct reward_model  # the judge (reward_model.py --judge changes it)
for fam in $FAMILIES; do
    case $fam in base) tag=gemma-3-270m ;; instruct) tag=smollm2-135m-instruct ;; *) echo "unknown family $fam"; exit 2 ;; esac
    run "$tag" lr_pilot --model-family "$fam" --seeds 0
    pilot="reproduce/results/$tag/lr_pilot/result_cpu.json"
    lr=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['measured']['chosen_lr'])" "$pilot")
    pairs() {  # the pilot's sizing: the most pairs whose predicted time fits 30 minutes (cost only, not outcome)
        python -c "import json, sys; print(json.load(open(sys.argv[1]))['measured']['recommended_pairs'][sys.argv[2]])" "$pilot" "$1"
    }
    echo "learning rate for $fam: $lr (lr_pilot.py)"
    for script in probability_inflation orpo_vs_sft odds_vs_probability_ratio lambda_ablation; do
        n=$(pairs "$script")
        run "$tag" "$script" --model-family "$fam" --lr "$lr" --train-pairs "$n" --heldout-pairs "$n"
    done
    run "$tag" gradient_formula --model-family "$fam"
    run "$tag" memory_and_time --model-family "$fam"
    run "$tag" win_rate --model-family "$fam" --lr "$lr" --train-pairs "$(pairs win_rate)"
done
python reproduce/summarize.py | tee reproduce/results/summary_cpu.md
