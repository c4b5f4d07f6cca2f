"""tiny-shakespeare, the 1,115,394-character file of the char-rnn repository, split 90/10 as
nanoGPT's shakespeare_char, so validation losses compare with published ones.

    python -m charlm.train --config configs/tinyshakespeare.py

The first 1,003,854 characters train, the remaining 111,540 validate (no test split, as in
nanoGPT). The GPU model is the seed's: a 3-layer LSTM of 512 units (6.4M parameters), dropout
0.5, batch 100 x 100 characters, 5k steps. Expected result: not measured yet (the published
figure to compare with: nanoGPT's 10.7M-parameter Transformer reaches 1.4697 nats/char on this
split). docs/speed.md has 300-step loss curves of this config on an H200.

Variants:
  configs/tinyshakespeare.py:small  a 2-core CPU run of about 10 minutes (2x256, 2.5k steps).
                                    Expected, as measured on a 2-core CPU (2026-11-26,
                                    committed in 9ffaf3a): validation loss 1.555 nats/char
                                    (2.24 bpc) on 50 batches (102k of the 111,540 validation
                                    characters), with speaker names and verse-shaped lines in
                                    its samples.
  configs/tinyshakespeare.py:cpu5   the best model found for 5 minutes of a 2-core CPU
                                    (train.minutes=5; 2x256, locked dropout 0.2, Adam 3e-3
                                    cosine). Expected, as measured on the 2-core CPU of
                                    2026-12-04 (Intel Xeon, 359 GFLOP/s), by
                                    experiments/bench_quality.py running `python -m
                                    charlm.train --config configs/tinyshakespeare.py:cpu5
                                    --config.data.path=../shared/data/tinyshakespeare.txt`:
                                    validation loss 1.442 nats/char (2.080 bpc) on the whole
                                    split, 1.377 with `charlm.evaluate --dynamic`.
  configs/tinyshakespeare.py:cpu15  the same for 15 minutes (2x384, locked dropout 0.25):
                                    1.420 nats/char (2.048 bpc) there, 1.355 with --dynamic;
                                    below nanoGPT's GPU Transformer's 1.4697.
  configs/tinyshakespeare.py:smoke  seconds; for tests (split 90/10 by fractions, so any
                                    small file does).
"""
from configs import common

TRAIN_CHARS, VAL_CHARS = 1_003_854, 111_540  # nanoGPT: data[:int(n * 0.9)], data[int(n * 0.9):]


def get_config(arg=None):
  split = (0.9, 0.1, 0.0) if arg == 'smoke' else (TRAIN_CHARS, VAL_CHARS, 0)
  return common.corpus_config(
      arg, name='tinyshakespeare', data={'name': 'tinyshakespeare', 'split': split},
      gpu={'num_layers': 3, 'hidden': 512, 'dropout': 0.5, 'batch_size': 100, 'seq_len': 100,
           'steps': 5000},
      small={'num_layers': 2, 'hidden': 256, 'steps': 2500})
