"""Default configuration: every field charlm reads, documented. Other configs start from this.

    python -m charlm.train --config configs/default.py --config.data.path=input.txt

Variants through the colon argument: `configs/default.py:smoke` is a tiny model for tests.
"""
import ml_collections


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.name = 'default'  # Names the default workdir: runs/<name>.

  config.data = ml_collections.ConfigDict()
  config.data.name = ''  # A named corpus ('shakespeare'); used when `path` is empty.
  config.data.path = ''  # Any local text file; takes precedence over `name`.
  config.data.level = 'char'  # 'char': the corpus' code points. 'byte': all 256 bytes.
  config.data.split = (0.9, 0.05, 0.05)  # Contiguous train/val/test fractions.
  config.data.cache_dir = ''  # Token-file cache ('': $CHARLM_CACHE or ~/.cache/charlm).

  config.model = ml_collections.ConfigDict()
  config.model.cell = 'lstm'  # 'lstm', 'gru' or 'rnn' (tanh).
  config.model.num_layers = 2
  config.model.hidden = 128
  config.model.embed = 0  # Embedding size; 0 means the same as `hidden`.
  config.model.dropout = 0.0  # Between layers and before the output layer, as in char-rnn.
  # AWD-LSTM's regularisers (Merity et al. 2017), each off by default; they act in training
  # only, on every impl and cell (their cost in chars/s: docs/speed.md). With locked_dropout,
  # `dropout` and `input_dropout` draw one mask per sequence (batch row), the same at every
  # timestep (locked, or variational, dropout), instead of one per timestep.
  config.model.locked_dropout = False
  # Dropout of the first layer's embedded inputs. In training it projects each character's
  # embedding instead of looking the projection up in a table: a larger matmul.
  config.model.input_dropout = 0.0
  # Drops whole characters (rows of the embedding), one mask per train step.
  config.model.embed_dropout = 0.0
  # DropConnect on each layer's recurrent matrix: one mask per train step, shared by every
  # batch row and timestep.
  config.model.weight_drop = 0.0
  # How LSTM layers train: 'fused' (a hand-written backward pass with the weight gradients as
  # large matmuls), 'wavefront' (all layers in one loop, for GPUs), 'scan' (autodiff through
  # lax.scan; the reference), or 'auto': 'wavefront' on a GPU for 2+ layers with batch per
  # device x hidden <= 65,536, else 'fused'. Same parameters: a run loads under any of them.
  # charlm.train prints what runs; docs/speed.md has the measurements behind every 'auto'.
  config.model.impl = 'auto'
  # Matmul inputs: 'float32', or 'bfloat16' for GPUs/TPUs (parameters, state and the gate
  # arithmetic stay float32). Slower on CPUs without bf16 units.
  config.model.dtype = 'float32'
  # With bfloat16 matmuls, the dtype of the gate inputs the LSTM loops take and of the gradient
  # they give back: 'float32', 'bfloat16' (half the memory traffic, same values), or 'auto':
  # bfloat16 on GPUs, float32 elsewhere.
  config.model.gate_inputs = 'auto'
  # With bfloat16 matmuls, the dtype in which the forward loop saves the gate activations for
  # the backward loop: 'float32', 'float16' (11 significant bits for values in [-1, 1]), or
  # 'auto': float16 on GPUs, float32 elsewhere.
  config.model.saved_gates = 'auto'
  # The LSTM state inside XLA's loops: 'feature_major' ([hidden, batch]), 'batch_major', or
  # 'auto': feature-major on CPUs, batch-major elsewhere.
  config.model.loop_layout = 'auto'
  config.model.unroll = 0  # lax.scan unroll of the LSTM's forward loop; 0: 2 on CPUs, 8 elsewhere.
  config.model.unroll_backward = 0  # Of its backward loop; 0: 1 on CPUs, 8 elsewhere.
  config.model.unroll_divides = True  # Round each unroll to a divisor of the loop's length.
  # On a CPU, run float32 LSTM loops as native code (charlm/lstm_cpu.cc, built on first use
  # with the machine's C++ compiler; XLA's loops where there is none).
  config.model.native_cpu = True

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1000  # Total optimizer steps; rerunning a finished run with more resumes it.
  # A wall-clock budget in minutes (0: off), from the start of the run to its last step's
  # evaluation and checkpoint. A fresh run times its first steps (after compiling), an
  # evaluation, a checkpoint and a sample, and replaces train.steps by the count that fits, so
  # the learning-rate schedule ends when the time is up; the count is printed and recorded in
  # config.json and the checkpoints. A resume (with the same train.minutes) keeps that count;
  # it is never timed again.
  config.train.minutes = 0.0
  config.train.batch_size = 32  # Global number of parallel character streams.
  config.train.seq_len = 64  # Characters per stream per step (truncated BPTT length).
  # On a CPU: how many CPU devices (a thread each) split every batch under charlm.train.
  # 0: $JAX_NUM_CPU_DEVICES if set, else 1 where the LSTM runs the native CPU loops (they
  # split the batch over the cores themselves), else 2 for hidden <= 256 on a machine with 2+
  # cores (XLA's loops, whose small steps two threads overlap), else 1. No effect on GPUs/TPUs,
  # whose devices are all used.
  config.train.cpu_devices = 0
  config.train.seed = 0
  config.train.log_every = 50  # Steps between train metrics (and host syncs).
  config.train.eval_every = 500  # Steps between validation passes (0: only at the end).
  config.train.eval_batches = 0  # Validation batches per pass; 0 means the whole split.
  config.train.ckpt_every = 500  # Steps between checkpoints (0: only at the end).
  config.train.keep_checkpoints = 3  # Latest checkpoints kept, besides the best by val loss.
  config.train.patience = 0  # Stop after this many evals without improvement (0: never).
  config.train.sample_every = 0  # Steps between samples in samples.md and TensorBoard (0: never).
  config.train.sample_length = 500  # Characters per sample.
  config.train.sample_prime = '\n'  # Text the samples start from.
  config.train.sample_temperatures = (0.5, 1.0)
  config.train.final_sample_length = 500  # Characters printed at the end of training (0: none).
  # Config fields shown in TensorBoard's HParams dashboard, comma-separated dotted names
  # ('model.hidden,optim.lr'); '': model.cell, model.num_layers, model.hidden, model.dropout,
  # train.batch_size, train.seq_len, optim.name, optim.lr. charlm.sweep sets its overrides here.
  config.train.hparams = ''

  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'adam'  # 'adam', 'adamw', 'rmsprop' or 'sgd'.
  config.optim.lr = 2e-3
  # 'constant', 'char_rnn' (per-epoch decay), 'cosine' (warmup, then down to min_lr_ratio at
  # the last step) or 'auto': cosine under a train.minutes budget, constant otherwise, as
  # measured on the 2-core CPU (docs/speed.md); config.json records the one that ran.
  config.optim.schedule = 'auto'
  config.optim.clip = 5.0  # Global gradient-norm clipping (0: off).
  # adamw only: decoupled weight decay (each step, param -= lr * weight_decay * param, as
  # PyTorch's AdamW) of the matrices and the embedding; biases are left alone (an LSTM's
  # forget-gate bias starts at 1 on purpose).
  config.optim.weight_decay = 0.0
  config.optim.momentum = 0.9  # sgd only.
  config.optim.rmsprop_decay = 0.95  # rmsprop only (char-rnn's alpha).
  config.optim.decay_rate = 0.97  # char_rnn: multiply lr by this after every epoch ...
  config.optim.decay_after_epochs = 10  # ... from this epoch on.
  config.optim.warmup_steps = 100  # cosine: linear warmup steps.
  config.optim.min_lr_ratio = 0.1  # cosine: final lr as a fraction of `lr`.

  if arg == 'smoke':
    config.name = 'smoke'
    config.model.hidden = 32
    config.model.num_layers = 2
    config.train.steps = 20
    config.train.batch_size = 4
    config.train.seq_len = 16
    config.train.log_every = 5
    config.train.eval_every = 10
    config.train.ckpt_every = 10
    config.train.final_sample_length = 50
  elif arg:
    raise ValueError(f'unknown variant {arg!r} of configs/default.py; use "smoke" or none')

  config.lock()
  return config
