#!/usr/bin/env bash
# Side by side with sheeprl: seconds per gradient step and peak RSS of sheeprl 0.8.4's DreamerV2 on gymnasium's vector
# CartPole-v1 (4 observations, 2 discrete actions), CPU, at the config of benchmarks/roofline.py's `sheeprl` entry
# (env gym:CartPole-v1, preset paper + classes=32 stoch=32 deter=200 hidden=200 mlp_layers=4 mlp_units=400
# ac_layers=4 ac_units=400 imag_starts=null horizon=15 batch_size=16 seq_len=50; obs 4, 2 discrete actions).
#
#   bash benchmarks/peers/sheeprl_dreamerv2.sh             # THREADS=2 WARMUP=5 STEPS=40 by default
#   THREADS=1 PREFILL=100 WARMUP=2 STEPS=3 bash benchmarks/peers/sheeprl_dreamerv2.sh   # a quick check
#
# Environment variables (defaults in brackets):
#   SHEEPRL_VENV  scratch venv, outside the repo        [$HOME/.cache/reweigh-peers/sheeprl-0.8.4]
#   PYTHON        interpreter that builds the venv      [python3]  (sheeprl 0.8.4 needs 3.10-3.13)
#   THREADS       torch intra-op threads                [2]
#   PREFILL       random-action env steps first         [500]  (algo.learning_starts; training waits for >= 50)
#   WARMUP        gradient steps run but not timed      [5]
#   STEPS         gradient steps timed after warm-up    [40]
#   SEED          sheeprl seed                          [42]
#   ACTOR_OBJECTIVE_MIX  algo.actor.objective_mix       [null]  (null: REINFORCE for discrete actions, as our
#                                                                 actor_grad=auto; 0.0: dynamics backprop)
#   OUT           result JSON                           [benchmarks/results/sheeprl_dreamerv2.json]
#   PRECISION     Lightning Fabric precision            [32-true]  (bf16-mixed: autocast to bfloat16)
#   WORKDIR       sheeprl's run directory (logs, hydra) [a fresh mktemp -d, removed at the end unless KEEP=1]
#
# The venv is built once (torch==2.13.0 first: an unpinned torch would pull a CUDA build; then sheeprl==0.8.4 with
# torch pinned) and marked with a stamp file; delete the venv to rebuild it.  The run is sheeprl's own CLI
# (`sheeprl.cli.run`, the `sheeprl` console script) started through benchmarks/peers/sheeprl_timing.py, which wraps
# sheeprl's `train` (exactly one gradient step: world model, actor and critic updates) and `training_timer` (the
# boundary of sheeprl's Time/train_time, from which it computes Time/sps_train) with time.perf_counter, checks
# torch.get_num_threads() inside every gradient step, and reads the process's VmHWM (and /usr/bin/time -v's maximum
# RSS where present); see that file's docstring.  The headline `s_per_grad_step` is the mean `train` time of the
# STEPS steps after the WARMUP ones; `s_per_grad_step_sheeprl_timer` is the same steps at sheeprl's Time/train_time
# boundary (adds sampling the batch from the replay buffer).  sheeprl's logged Time/sps_train is not used: it
# averages whole logging windows (warm-up included) and needs metric.log_level=1, which also turns on the per-step
# metric aggregator (extra entropies) and the TensorBoard writer.  Prefill and env/player steps are never timed.
#
# Hydra overrides (names from sheeprl 0.8.4's configs/config.yaml, algo/dreamer_v2.yaml, exp/dreamer_v2.yaml,
# env/gym.yaml and buffer/checkpoint/metric/fabric/model_manager default.yaml) and the field of our config
# (recipes/dreamer/config.py DreamerConfig) each matches:
#   exp=dreamer_v2                                     sheeprl's DreamerV2 experiment (3 Adam optimizers)
#   env=gym env.id=CartPole-v1                         gym:CartPole-v1, vector observations
#   env.num_envs=1                                     one env
#   env.sync_env=True                                  env in the training process (no AsyncVectorEnv subprocess:
#                                                      one process, whose peak RSS is the run's)
#   env.capture_video=False                            no video
#   algo.cnn_keys.encoder=[] algo.cnn_keys.decoder=[]  pixels=false (exp/dreamer_v2 sets [rgb])
#   algo.mlp_keys.encoder=[state] algo.mlp_keys.decoder=[state]   the vector obs is encoded and reconstructed
#   algo.world_model.recurrent_model.recurrent_state_size=200     deter=200
#   algo.world_model.stochastic_size=32                stoch=32
#   algo.world_model.discrete_size=32                  classes=32 (categorical latents)
#   algo.world_model.transition_model.hidden_size=200  hidden=200: prior's hidden layer, and the layer before the GRU
#                                                      (recurrent_model.dense_units interpolates it)
#   algo.world_model.representation_model.hidden_size=200        hidden=200: posterior's hidden layer
#   algo.world_model.recurrent_model.layer_norm=True   our RSSM's LayerNorm after the hidden Linear of img_in,
#   algo.world_model.transition_model.layer_norm=True  img_out and obs_out (sheeprl's GRU cell always has its
#   algo.world_model.representation_model.layer_norm=True        LayerNorm, as our LayerNormGRUCell)
#   algo.layer_norm=False                              no LayerNorm in encoder/decoder/reward/actor/critic MLPs
#   algo.mlp_layers=4 algo.dense_units=400             mlp_layers=4 mlp_units=400 (encoder, decoder, reward head) and
#                                                      ac_layers=4 ac_units=400 (actor, critic): all interpolate these
#   algo.world_model.use_continues=False               discount_head=false
#   algo.horizon=15                                    horizon=15; sheeprl always imagines from all batch x sequence
#                                                      posteriors = imag_starts=null (checked: 800 start states)
#   algo.per_rank_batch_size=16 algo.per_rank_sequence_length=50  batch_size=16 seq_len=50
#   algo.actor.objective_mix=$ACTOR_OBJECTIVE_MIX      actor_grad=auto: null = REINFORCE for discrete actions
#   algo.replay_ratio=1 algo.per_rank_pretrain_steps=0 benchmark only: one gradient step per env step after the
#   algo.learning_starts=$PREFILL                      prefill, no pretraining burst
#   algo.total_steps=<max(PREFILL,50) - 1 + WARMUP + STEPS>   so that exactly WARMUP + STEPS gradient steps run
#   algo.run_test=False                                no test episode at the end
#   algo.compile.enabled=False                         eager, as ours
#   buffer.size=<total + 100> buffer.memmap=False buffer.checkpoint=False   small in-memory replay, never saved
#   checkpoint.every=0 checkpoint.save_last=False      no checkpoints
#   metric.log_level=0                                 no metric aggregator, timers or TensorBoard logger
#   model_manager.disabled=True                        no MLflow model registration
#   fabric.accelerator=cpu fabric.devices=1 fabric.precision=$PRECISION   CPU; 32-true (fp32) by default,
#                                                      bf16-mixed = Lightning Fabric's autocast, to compare with our
#                                                      --set precision=bf16 (both keep fp32 weights)
#   float32_matmul_precision=highest                   sheeprl's default "high" sets torch's oneDNN fp32 matmuls to
#                                                      TF32; ours keeps torch's default (highest: full fp32)
#   num_threads=$THREADS                               sheeprl's knob (it only sets OMP_NUM_THREADS after torch is
#                                                      imported); the threads come from OMP_NUM_THREADS/MKL_NUM_THREADS
#                                                      exported here and torch.set_num_threads in sheeprl_timing.py
#   seed=$SEED log_root=$WORKDIR/logs hydra.run.dir=$WORKDIR/hydra     outputs outside the repo
# sheeprl defaults that already equal ours (not overridden): gamma 0.99, lambda 0.95, KL balance 0.8, free nats 1.0
# (on the mean KL), KL scale 1.0, world-model lr 3e-4 eps 1e-5, actor/critic lr 8e-5 eps 1e-5, weight decay 1e-6,
# gradient clip 100 (all three), actor entropy 1e-4, target critic refreshed every 100 gradient steps, ELU
# activations, one-hot straight-through categorical actor, unit-variance Normal reward/critic heads.
#
# MISMATCHES that could not be resolved (say so when comparing):
#  * Vector encoder.  sheeprl: 4 x (Linear 400 + ELU), the embedding being the last activation; ours: 3 x (Linear 400
#    + ELU) + a final Linear to the 400-wide embedding.  Same four Linear layers (same FLOPs), one ELU fewer in ours.
#  * GRU input Linear bias.  sheeprl's LayerNormGRUCell has one (bias=True, hard-coded), ours none (DreamerV2's): 600
#    more weights (world model 3,448,053 vs our 3,447,453 at this config; actor 972,002 and critic 971,601 equal).
#  * REINFORCE implementation.  sheeprl's imagination samples straight-through actions from the actor and runs the
#    RSSM, reward head and target critic with gradients enabled (world-model weights still require grad), so the whole
#    imagination graph is recorded and held until the step ends although the REINFORCE loss never backpropagates
#    through it (memory and autograd bookkeeping; ours detaches the actions and freezes the world model there); and it
#    runs the actor a second time on the 14 x 800 imagined states for the log-probs and entropies (ours keeps those of
#    the imagination pass).  Not configurable: part of what is compared.
#  * Weight decay.  sheeprl multiplies the weights by 1 - 1e-6 before every Adam step (DreamerV2's convention); ours is
#    AdamW (decoupled, lr x 1e-6).  Same cost, slightly different numbers.  LayerNorm eps 1e-3 (sheeprl) vs 1e-5.
#  * Terminations.  With use_continues=False sheeprl ignores them in imagination (constant gamma); ours zeroes the first
#    imagined discount of terminal start states when its batch carries "discount".  Negligible cost.
#  * Per-step extras.  sheeprl's update goes through Lightning Fabric's module/optimizer wrappers; with
#    metric.log_level=0 it skips its per-step metrics (posterior/prior entropies, losses), which our train_step
#    always returns.
#  * Replay schedule.  replay_ratio=1 and no pretraining here (ours: train_every); it changes when gradient steps
#    happen, not what one costs.  The timed batches come from a small early buffer of real CartPole episodes.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHEEPRL_VERSION=0.8.4
TORCH_PIN=torch==2.13.0
SHEEPRL_VENV=${SHEEPRL_VENV:-$HOME/.cache/reweigh-peers/sheeprl-$SHEEPRL_VERSION}
PYTHON=${PYTHON:-python3}
THREADS=${THREADS:-2}
PREFILL=${PREFILL:-500}
WARMUP=${WARMUP:-5}
STEPS=${STEPS:-40}
SEED=${SEED:-42}
ACTOR_OBJECTIVE_MIX=${ACTOR_OBJECTIVE_MIX:-null}
OUT=${OUT:-$ROOT/benchmarks/results/sheeprl_dreamerv2.json}
KEEP=${KEEP:-0}
PRECISION=${PRECISION:-32-true}

for v in THREADS PREFILL WARMUP STEPS SEED; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "$v must be a non-negative integer, got '${!v}'" >&2; exit 2; }
done
((THREADS >= 1 && STEPS >= 1)) || { echo "THREADS and STEPS must be >= 1" >&2; exit 2; }

# --- 1. the scratch venv (idempotent: a stamp file marks a finished build) -----------------------------------------
case "$(cd "$(dirname "$SHEEPRL_VENV")" 2>/dev/null && pwd)/" in
  "$ROOT"/*) echo "SHEEPRL_VENV must be outside the repository ($ROOT)" >&2; exit 2 ;;
esac
STAMP=$SHEEPRL_VENV/.reweigh-peers-stamp
if [[ ! -f $STAMP ]]; then
  echo "building $SHEEPRL_VENV ($TORCH_PIN, then sheeprl==$SHEEPRL_VERSION)"
  mkdir -p "$(dirname "$SHEEPRL_VENV")"
  [[ -x $SHEEPRL_VENV/bin/python ]] || "$PYTHON" -m venv "$SHEEPRL_VENV"
  "$SHEEPRL_VENV/bin/pip" install -q "$TORCH_PIN"
  "$SHEEPRL_VENV/bin/pip" install -q "sheeprl==$SHEEPRL_VERSION" "$TORCH_PIN"
  "$SHEEPRL_VENV/bin/python" -c "import sheeprl, torch, gymnasium; print('sheeprl', sheeprl.__version__, 'torch', \
torch.__version__); gymnasium.make('CartPole-v1')" | tee "$STAMP.tmp"
  mv "$STAMP.tmp" "$STAMP"
fi

# --- 2. the run --------------------------------------------------------------------------------------------------
if [[ -n ${WORKDIR:-} ]]; then
  mkdir -p "$WORKDIR"
else
  WORKDIR=$(mktemp -d "${TMPDIR:-/tmp}/sheeprl-dv2.XXXXXX")
  [[ $KEEP == 1 ]] || trap 'rm -rf "$WORKDIR"' EXIT
fi
WORKDIR=$(cd "$WORKDIR" && pwd)
# Training starts at iteration max(learning_starts, sequence length 50) (sheeprl.utils.utils.off_policy_schedule),
# then replay_ratio=1 does one gradient step per iteration (one env, one env step per iteration).
TRAIN_STARTS=$((PREFILL > 50 ? PREFILL : 50))
TOTAL=$((TRAIN_STARTS - 1 + WARMUP + STEPS))

OVERRIDES=(
  exp=dreamer_v2
  env=gym env.id=CartPole-v1 env.num_envs=1 env.sync_env=True env.capture_video=False
  "algo.cnn_keys.encoder=[]" "algo.cnn_keys.decoder=[]"
  "algo.mlp_keys.encoder=[state]" "algo.mlp_keys.decoder=[state]"
  algo.world_model.recurrent_model.recurrent_state_size=200
  algo.world_model.stochastic_size=32
  algo.world_model.discrete_size=32
  algo.world_model.transition_model.hidden_size=200
  algo.world_model.representation_model.hidden_size=200
  algo.world_model.recurrent_model.layer_norm=True
  algo.world_model.transition_model.layer_norm=True
  algo.world_model.representation_model.layer_norm=True
  algo.layer_norm=False
  algo.mlp_layers=4 algo.dense_units=400
  algo.world_model.use_continues=False
  algo.horizon=15
  algo.per_rank_batch_size=16 algo.per_rank_sequence_length=50
  "algo.actor.objective_mix=$ACTOR_OBJECTIVE_MIX"
  algo.replay_ratio=1 algo.per_rank_pretrain_steps=0 "algo.learning_starts=$PREFILL"
  "algo.total_steps=$TOTAL"
  algo.run_test=False
  algo.compile.enabled=False
  "buffer.size=$((TOTAL + 100))" buffer.memmap=False buffer.checkpoint=False
  checkpoint.every=0 checkpoint.save_last=False
  metric.log_level=0
  model_manager.disabled=True
  fabric.accelerator=cpu fabric.devices=1 fabric.precision="$PRECISION"
  float32_matmul_precision=highest
  "num_threads=$THREADS"
  "seed=$SEED"
  "log_root=$WORKDIR/logs" "hydra.run.dir=$WORKDIR/hydra"
)

export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
TIMER=()
TIME_LOG=""
if [[ -x /usr/bin/time ]] && /usr/bin/time -v true >/dev/null 2>&1; then
  TIME_LOG=$WORKDIR/time-v.txt
  TIMER=(/usr/bin/time -v -o "$TIME_LOG")
fi
LOG=$WORKDIR/sheeprl.log
echo "sheeprl $SHEEPRL_VERSION dreamer_v2 CartPole-v1: threads $THREADS, prefill $PREFILL, $WARMUP warm-up + $STEPS" \
  "timed gradient steps (log: $LOG)"
if ! (cd "$WORKDIR" && "${TIMER[@]}" "$SHEEPRL_VENV/bin/python" "$HERE/sheeprl_timing.py" run \
  --threads "$THREADS" --warmup "$WARMUP" --expect "$STEPS" --raw "$WORKDIR/raw.json" -- "${OVERRIDES[@]}") \
  >"$LOG" 2>&1; then
  tail -n 40 "$LOG" >&2
  echo "sheeprl run failed (log above; KEEP=1 keeps $WORKDIR)" >&2
  exit 1
fi

# --- 3. the result -----------------------------------------------------------------------------------------------
"$SHEEPRL_VENV/bin/python" "$HERE/sheeprl_timing.py" finalize --raw "$WORKDIR/raw.json" --out "$OUT" \
  ${TIME_LOG:+--time-log "$TIME_LOG"} \
  --meta "env=gymnasium:CartPole-v1" --meta "prefill_env_steps=$PREFILL" --meta "seed=$SEED" \
  --meta "actor_objective_mix=$ACTOR_OBJECTIVE_MIX" --meta "host=$(uname -n)" \
  --meta "cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)" \
  --meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
