"""The C source of the Linux kernel, all .c and .h files, as bytes (the seed's Linux experiment).

    python -m charlm.data prepare linux [--source DIR_OR_TARBALL]
    python -m charlm.train --config configs/linux.py

The source is a kernel tree (a directory), a kernel.org tarball, or the tarball Debian's
`linux-source-6.1` package installs under /usr/src (found by itself); 6.1 gives 1.18 GB of C.
The GPU model is the seed's: a 3-layer LSTM, here of 640 units (10.2M parameters), batch 100 x
100 bytes, 50k steps. Expected result: not measured yet.

Variants:
  configs/linux.py:small  a 2-core CPU run on `linux_small`, the kernel/ and mm/ directories
                          (17 MB): a 2x256 LSTM, 2.5k steps. Expected, as measured on the
                          2-core CPU of 2026-12-04 (Linux 6.1, about 4 minutes): validation
                          loss 1.398 nats per byte (2.02 bits) on 50 batches (1.632 with the
                          code of 2026-11-26, a53dbb2); samples have #ifdef CONFIG_...,
                          if (...) blocks with tab indentation, struct declarations and
                          kernel-shaped names.
  configs/linux.py:cpuN   the best model found for N minutes of a 2-core CPU (common.py's
                          CPU_RECIPES, searched on tinyshakespeare), on linux_small. Expected,
                          as measured on the 2-core CPU of 2026-12-07 (AMD EPYC) by `python -m
                          charlm.train --config configs/linux.py:cpu5` (and :cpu15), whole
                          splits: the best validation loss logged, the test loss of the best
                          checkpoint (experiments/results/recipes_linux_cpu.json): :cpu5
                          (2x256) validation 1.346 nats/byte (1.94 bits), test 1.379; :cpu15
                          (2x384) validation 1.226 (1.77 bits), test 1.255. The Kneser-Ney
                          20-gram on the same splits is still ahead: 1.174 and 1.179.
  configs/linux.py:smoke  seconds; for tests.
"""
from configs import common


def get_config(arg=None):
  config = common.corpus_config(
      arg, name='linux', data={'name': 'linux', 'level': 'byte'},
      gpu={'num_layers': 3, 'hidden': 640, 'dropout': 0.1, 'batch_size': 100, 'seq_len': 100,
           'steps': 50_000},
      small={'num_layers': 2, 'hidden': 256, 'steps': 2500})
  if arg and (arg in ('small', 'smoke') or arg.startswith('cpu')):  # 17 MB, not 1.18 GB.
    config.unlock()
    config.data.name = 'linux_small'
    config.lock()
  return config
