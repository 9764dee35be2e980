# Sourced by run.sh and study.sh: run_cells RUNS_DIR PYTHON [OVERRIDE ...] trains each entry of the array `cells`
# ("<name> <override> ..."), one `python -m frcnn_lab.train experiment=$experiment logger=csv` per cell into
# RUNS_DIR/<name>, logging to RUNS_DIR.log.d/<name>.log; the extra overrides go to every cell. `experiment`:
# the preset (findings/hard unless the sourcing script sets it).
# Resumable: a cell whose status.json says "completed" is skipped; an interrupted one (killed with its session)
# continues from its checkpoints/last.ckpt in its own directory; one without a checkpoint is moved, whole, to
# RUNS_DIR.unfinished/ (kept, never deleted) and run again. Several drivers may share one RUNS_DIR (e.g. two at
# OMP_NUM_THREADS=1 on two cores): each cell is claimed with a lock, and a driver skips the cells another one runs.
# ONLY=<regex>: just the cells whose name matches it, e.g. ONLY='rois16_px600_s[34]'.
# A completed cell's best checkpoint is then evaluated on the val split (its inference.* overrides kept): the
# per-image detections in <cell>/evaluate/<time>/ give the report its interval over the validation images.
evaluate_val() {
  local python=$1 dir=$2 inference=() override
  shift 2
  for override in "$@"; do [[ $override == inference.* ]] && inference+=("$override"); done
  if "$python" -m frcnn_lab.evaluate ckpt_path="$dir/checkpoints/best.ckpt" split=val "${inference[@]}" \
      > "$dir.evaluate.log" 2>&1; then
    echo "$(date -u +%FT%TZ) evaluated $(basename "$dir") on val"
  else
    echo "$(date -u +%FT%TZ) FAILED to evaluate $(basename "$dir") (see $dir.evaluate.log)"
  fi
}

run_cells() {
  local runs=$1 python=$2
  shift 2
  if [[ -n ${ONLY:-} ]]; then
    local selected=() entry
    for entry in "${cells[@]}"; do [[ ${entry%% *} =~ ^($ONLY)$ ]] && selected+=("$entry"); done
    cells=("${selected[@]}")
  fi
  mkdir -p "$runs" "$runs.unfinished" "$runs.log.d"
  local entry name overrides dir lock action start
  for entry in "${cells[@]}"; do
    read -r name overrides <<< "$entry"
    dir="$runs/$name"
    exec {lock}> "$runs.log.d/$name.lock"
    if ! flock -n "$lock"; then
      exec {lock}>&-
      continue
    fi
    if [[ -f "$dir/status.json" ]] && grep -q '"completed"' "$dir/status.json"; then
      exec {lock}>&-
      continue
    fi
    local resume=()
    action=start
    if [[ -f "$dir/checkpoints/last.ckpt" ]]; then
      resume=("ckpt_path=$dir/checkpoints/last.ckpt") action=resume
    elif [[ -e "$dir" ]]; then
      mv "$dir" "$runs.unfinished/$name-$(date +%Y%m%d-%H%M%S)"
    fi
    echo "$(date -u +%FT%TZ) $action $name: $overrides"
    start=$(date +%s)
    # shellcheck disable=SC2086  # the overrides are separate words
    if "$python" -m frcnn_lab.train experiment="${experiment:-findings/hard}" logger=csv "$@" $overrides "${resume[@]}" \
        hydra.run.dir="$dir" >> "$runs.log.d/$name.log" 2>&1; then
      echo "$(date -u +%FT%TZ) done  $name in $(( $(date +%s) - start )) s"
      evaluate_val "$python" "$dir" $overrides
    else
      echo "$(date -u +%FT%TZ) FAILED $name after $(( $(date +%s) - start )) s (see $runs.log.d/$name.log)"
    fi
    exec {lock}>&-
  done
}
