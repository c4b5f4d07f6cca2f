r"""Training speed: charlm's train step against PyTorch's LSTM (the peer), alternating in one run.

    python experiments/bench_train.py              # the CPU sizes, 5 rounds (about 10 minutes)
    python experiments/bench_train.py --sizes 2x256:32x64 --rounds 2 --out ''   # a quick look
    python experiments/bench_train.py --variant model.impl=fused \
        --variant model.impl=fused,model.dtype=bfloat16 --variant model.impl=wavefront  # GPU
    python experiments/bench_train.py --override model.impl=fused --override model.dtype=bfloat16 \
        --variant default --variant model.gate_inputs=float32,model.saved_gates=float32  # GPU

What charlm runs is config overrides on top of configs/default.py (charlm's defaults): each
--override SECTION.FIELD=VALUE applies to every variant, and each --variant is a
comma-separated list of overrides of its own, applied after them ('default': none). By default
one variant runs charlm's defaults, which on a CPU resolve to model.impl='fused' in float32 with
the native LSTM loops. Each variant is labelled by its overrides and what they resolve to
(`model.Resolved.describe`), which the JSON records too (`resolved`, as config.model fields).

A size LxH:BxT is L LSTM layers of H units, batch B, sequence T; vocabulary 65, embedding H,
Adam 2e-3, global-norm clipping 5, hidden state carried from step to step, random characters
(speed does not depend on the text). charlm runs its real train step: `trainer.build` and
`trainer.make_train_step`, jitted with the state donated and sharded as `charlm.train` does.
The peer is `../shared/bench/torch_charrnn.py train` (torch.nn.LSTM: oneDNN on a CPU, cuDNN on
a GPU) in its own environment, made by `../shared/bench/setup.sh`.

Each round runs, for every size, charlm (compiled beforehand, in this process) and then the
peer, so that machine noise hits both; both time every step to its end and take the median
step time of the round. The table gives medians over rounds; the ratio is the median of each
round's charlm/peer ratio (its range in brackets). Also in the same run: the matmul rate of
this machine (a 2048^3 float32 jnp.dot on a CPU; on a GPU 8192^3 in each variant's dtype, where
float32 is JAX's default TF32; the best of all rounds is the "peak"), the
training FLOPs per character (6 x matmul parameters, the same count for both, although charlm's
first layer looks its input projection up in a table instead of multiplying, so that its share
of the peak can pass 100%: at 2x512 a quarter of the counted FLOPs are that projection's), the
jit compile time and memory. On a CPU the process has two CPU devices and each size's mesh
takes as many as `charlm.train` would use (`host.cpu_devices`: 1 with the native LSTM loops,
else 2 for hidden <= 256); the table says how many.
Results: a markdown table on stdout and JSON under experiments/results/.
"""
import json
import os
import resource
import statistics

import common
from absl import app, flags

from charlm.errors import exit_on_user_error

_SIZES = flags.DEFINE_list('sizes', [], 'LxH:BxT sizes (default: the CPU or GPU set).')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Alternating charlm/peer rounds (medians).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per size and round, on each side.')
_MAX_SECONDS = flags.DEFINE_float('max_seconds', 0, 'Start no round that would end past this '
                                  'many seconds of rounds (compiling not counted; 0: no limit); '
                                  'at least one round runs.')
_OVERRIDE = flags.DEFINE_multi_string('override', [], 'SECTION.FIELD=VALUE on top of '
                                      "configs/default.py, for every variant (e.g. "
                                      'model.dtype=bfloat16).')
_VARIANT = flags.DEFINE_multi_string('variant', ['default'], "A comma-separated list of "
                                     "overrides after --override's, each variant timed against "
                                     "the same peer runs ('default': none), e.g. "
                                     'model.impl=fused,model.saved_gates=float16.')
_PEER_PYTHON = flags.DEFINE_string('peer_python', '', "The peer's python ('': from setup.sh).")
_PEER_DIR = flags.DEFINE_string('peer_dir', common.PEER_DIR,
                                'Folder holding torch_charrnn.py and setup.sh.')
_NO_PEER = flags.DEFINE_bool('no_peer', False, 'Run charlm only.')
_OUT = flags.DEFINE_string('out', None, "JSON results (default experiments/results/"
                           "bench_train_<platform>.json; '': none).")


@exit_on_user_error
def main(argv):
  del argv
  common.set_up_host()
  shared = [o for text in _OVERRIDE.value for o in common.split_overrides(text)]
  variants = {}  # Label ('default' or its overrides) -> its overrides.
  for text in _VARIANT.value:
    overrides = common.split_overrides(text)
    common.bench_config(None, shared, overrides)  # A mistake fails here, before JAX starts.
    variants[','.join(overrides) or 'default'] = overrides
  import jax
  gpu = jax.devices()[0].platform == 'gpu'
  sizes = [common.parse_size(s)
           for s in (_SIZES.value or (common.GPU_SIZES if gpu else common.CPU_SIZES))]
  # Every variant's config and what it resolves to, checked before anything compiles.
  configs = {(size['name'], variant): common.bench_config(size, shared, overrides)
             for size in sizes for variant, overrides in variants.items()}
  resolved = {key: common.resolve(config) for key, config in configs.items()}
  # The matmul "peak" each variant is held to: float32 on a CPU (2048^3); on a GPU 8192^3 in
  # the variant's matmul dtype (JAX's default float32 precision there is TF32, as cuDNN's).
  matmul_n = 8192 if gpu else 2048
  peak_dtypes = sorted({r.dtype for r in resolved.values()} | {'float32'})
  python = None if _NO_PEER.value else common.peer_python(_PEER_PYTHON.value, _PEER_DIR.value)
  info = common.machine()
  info['load_before'] = os.getloadavg()
  print(f'{info.get("cpu", "")} / {info["device"]}, {info["cpu_count"]} cores, jax '
        f'{info["jax"]}; peer: {python or "none"}; overrides: {",".join(shared) or "none"}',
        flush=True)

  runners = {}
  for size in sizes:
    for variant in variants:
      key = size['name'], variant
      runner = common.Charlm(size, configs[key])
      runners[key] = runner
      print(f'compiled {size["name"]} {variant} ({runner.resolved.describe()}) in '
            f'{runner.compile_s:.1f}s', flush=True)

  rates = {key: [] for key in runners}
  peer_rates = {s['name']: [] for s in sizes}
  peer_runs = {s['name']: [] for s in sizes}
  peaks = {dtype: [] for dtype in peak_dtypes}
  for r in common.timed_rounds(_ROUNDS.value, _MAX_SECONDS.value):
    for dtype in peak_dtypes:
      peaks[dtype].append(common.matmul_rate(matmul_n, dtype))
    for size in sizes:
      name, chars = size['name'], size['batch'] * size['seq']
      line = f'round {r + 1}: {name}'
      for variant in variants:
        rate = chars / statistics.median(runners[name, variant].run(_STEPS.value))
        rates[name, variant].append(rate)
        line += f' charlm {variant} {rate:,.0f} chars/s,'
      if python:
        peer = common.peer_run(python, size, _STEPS.value, _PEER_DIR.value)
        peer_rates[name].append(chars / peer['step_s_median'])
        peer_runs[name].append(peer)
        line += f' peer {peer_rates[name][-1]:,.0f}'
      print(line + f' (matmul {peaks["float32"][-1]:,.0f} GFLOP/s, load '
            f'{os.getloadavg()[0]:.1f})', flush=True)
  rounds = len(peaks['float32'])
  info['load_after'] = os.getloadavg()

  peak = {dtype: max(got) for dtype, got in peaks.items()}
  rows = []
  for size in sizes:
    name = size['name']
    flops = common.flops_per_char(size)
    for variant, overrides in variants.items():
      runner, got = runners[name, variant], rates[name, variant]
      dtype = runner.resolved.dtype
      row = {**size, 'variant': variant, 'describe': runner.resolved.describe(),
             'overrides': shared + overrides, 'impl': configs[name, variant].model.impl,
             'model_impl': runner.impl, 'dtype': dtype, 'resolved': runner.resolved.to_json(),
             'train_flops_per_char': flops,
             'charlm_chars_per_s': statistics.median(got), 'charlm_rounds': got,
             'compile_s': runner.compile_s, 'charlm_step_buffers_mb': runner.step_mb,
             'charlm_loss_last': runner.loss, 'charlm_devices': runner.devices}
      row['charlm_gflops'] = row['charlm_chars_per_s'] * flops / 1e9
      row['charlm_peak_fraction'] = row['charlm_gflops'] / peak[dtype]
      if peer_rates[name]:
        row['peer_chars_per_s'] = statistics.median(peer_rates[name])
        row['peer_rounds'] = peer_rates[name]
        row['peer_gflops'] = row['peer_chars_per_s'] * flops / 1e9
        row['peer_peak_fraction'] = row['peer_gflops'] / peak['float32']
        # Paired: each round's charlm rate over the same round's peer rate, then the median.
        row['round_ratios'] = [a / b for a, b in zip(got, peer_rates[name], strict=True)]
        row['ratio'] = statistics.median(row['round_ratios'])
        row['peer_max_rss_mb'] = max(p['max_rss_mb'] for p in peer_runs[name])
        last = peer_runs[name][-1]
        row['peer'] = {k: last[k] for k in ('peer', 'torch', 'device', 'threads', 'gpu', 'cudnn')
                       if k in last}
      rows.append(row)
  info['charlm_max_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if gpu:
    stats = jax.devices()[0].memory_stats() or {}
    info['charlm_gpu_peak_mb'] = stats.get('peak_bytes_in_use', 0) / 2 ** 20
  info['matmul_n'] = matmul_n
  info['matmul_peak_gflops'] = peak
  info['matmul_rounds_gflops'] = peaks

  print(f'\nmatmul peak ({matmul_n}^3 jnp.dot, best of {rounds} rounds): '
        + ', '.join(f'{dtype} {got:,.0f} GFLOP/s' for dtype, got in peak.items())
        + f'; medians of {rounds} rounds of {_STEPS.value} steps; load average '
        f'{info["load_before"][0]:.1f} before, {info["load_after"][0]:.1f} after\n')
  print('| size | batch x seq | charlm variant: what runs | devices | charlm chars/s | '
        'peer chars/s | ratio | charlm GFLOP/s (% peak) | peer GFLOP/s (% f32 peak) | compile s | '
        'charlm step MB | peer RSS MB |')
  print('| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
  for row in rows:
    peer = (f'{row["peer_chars_per_s"]:,.0f} | {row["ratio"]:.2f}x '
            f'({min(row["round_ratios"]):.2f}-{max(row["round_ratios"]):.2f})' if 'ratio' in row
            else '- | -')
    peer_flops = (f'{row["peer_gflops"]:,.0f} ({100 * row["peer_peak_fraction"]:.0f}%)'
                  if 'ratio' in row else '-')
    peer_mb = f'{row["peer_max_rss_mb"]:.0f}' if 'ratio' in row else '-'
    mb = f'{row["charlm_step_buffers_mb"]:.0f}' if row['charlm_step_buffers_mb'] else '-'
    print(f'| {row["layers"]}x{row["hidden"]} | {row["batch"]}x{row["seq"]} | {row["variant"]}: '
          f'{row["describe"]} | {row["charlm_devices"]} | {row["charlm_chars_per_s"]:,.0f} | '
          f'{peer} | '
          f'{row["charlm_gflops"]:,.0f} ({100 * row["charlm_peak_fraction"]:.0f}%) | '
          f'{peer_flops} | {row["compile_s"]:.1f} | {mb} | {peer_mb} |')
  print(f'\ncharlm process peak RSS {info["charlm_max_rss_mb"]:.0f} MB (all sizes); charlm step '
        'MB: the compiled step\'s arguments, outputs and temporaries (XLA memory analysis)')

  out = _OUT.value
  if out is None:
    out = os.path.join(common.ROOT, 'experiments', 'results',
                       f'bench_train_{info["platform"]}.json')
  if out:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, 'w') as f:
      json.dump({'machine': info, 'overrides': shared, 'variants': list(variants),
                 'rounds': rounds, 'steps': _STEPS.value, 'results': rows}, f, indent=2)
    print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
