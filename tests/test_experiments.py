"""The speed tools under experiments/, end to end at tiny sizes: each runs what its config
overrides say and writes its table and JSON; a mistake in an override is a one-line error."""
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'experiments'))
BM = 'model.loop_layout=batch_major'


def test_covered_time_counts_overlaps_once():
  import profile_step
  assert profile_step.covered_us([]) == 0
  assert profile_step.covered_us([(10, 5), (0, 4), (2, 4), (12, 1), (14, 3)]) == 6 + 7


def run(args, ok=True):
  result = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, 'JAX_NUM_CPU_DEVICES': '1'})
  assert (result.returncode == 0) == ok, result.stdout + result.stderr
  return result


def test_profile_step_names_the_operations_of_a_step(tmp_path):
  out = run(['experiments/profile_step.py', '--size', '2x16:4x8', '--profile_steps', '2',
             '--top', '5', '--trace_dir', str(tmp_path / 'trace'), '--override',
             f'model.impl=wavefront,{BM}', '--override', 'model.unroll=2', '--override',
             'model.unroll_backward=2', '--override', 'model.unroll_divides=false']).stdout
  assert (" 2x16:4x8, model.impl='wavefront' (XLA's loops, batch-major, unroll 2/2 (not rounded "
          'to divisors)), dtype float32, ') in out
  ops = out[out.index('| operation |'):].splitlines()[2:7]
  assert len(ops) == 5 and all(float(line.split('|')[2]) >= 0 for line in ops), out
  assert list((tmp_path / 'trace').rglob('*.trace.json.gz'))


@pytest.mark.slow  # About 20 s of compiles for a benchmark's bookkeeping: make test-slow.
def test_lstm_loop_candidates_are_timed_against_the_first(tmp_path):
  out_json = tmp_path / 'loops.json'
  candidates = ['model.native_cpu=true', f'{BM},model.unroll=3,model.unroll_backward=2',
                f'model.impl=wavefront,{BM},model.unroll=4,model.unroll_divides=false',
                'model.unroll=2,model.unroll_backward=2,model.unroll_divides=false']
  run(['experiments/bench_lstm_loops.py', '--sizes', '2x16:16x8,2x16:2x8', '--override',
       'model.native_cpu=false', '--rounds', '3', '--max_seconds', '1e-6', '--steps', '2',
       '--no_peer', '--bench_out', str(out_json)]
      + [arg for c in candidates for arg in ('--candidate', c)])
  rows = json.loads(out_json.read_text())['results']
  assert [(r['size'], r['candidate'], r['impl']) for r in rows[:4]] == [
      ('2x16:16x8', c, impl) for c, impl in zip(candidates, ['fused', 'fused', 'wavefront',
                                                             'fused'], strict=True)]
  assert [r['overrides'][0] for r in rows] == ['model.native_cpu=false'] * len(rows)
  resolved = [r['resolved'] for r in rows[:4]]  # The candidate's overrides, over --override's.
  assert resolved[1]['native_cpu'] is False and resolved[1]['loop_layout'] == 'batch_major'
  assert (resolved[1]['unroll'], resolved[1]['unroll_backward']) == (3, 2)
  assert resolved[2]['unroll'] == 4 and resolved[2]['unroll_divides'] is False
  assert resolved[3]['loop_layout'] == 'feature_major'  # The CPU's default layout.
  assert all(r['dtype'] == 'float32' for r in rows)  # charlm's default, as --override replaced.
  # The second size: the baseline and the first size's fastest other candidate.
  assert [(r['size'], r['candidate']) for r in rows[4:5]] == [('2x16:2x8', candidates[0])]
  assert len(rows) == 6 and rows[5]['candidate'] in candidates[1:]
  assert rows[0]['vs_first'] == 1 and all(r['chars_per_s'] > 0 for r in rows)
  assert all(len(r['rounds']) == 1 for r in rows)  # --max_seconds stopped the rounds.


def test_bench_train_times_each_variant(tmp_path):
  out_json = tmp_path / 'train.json'
  variants = ['default', 'model.impl=wavefront', 'model.dtype=bfloat16',
              'model.saved_gates=float16,model.dtype=bfloat16,model.gate_inputs=bfloat16']
  out = run(['experiments/bench_train.py', '--sizes', '2x16:4x8', '--rounds', '1', '--steps',
             '2', '--no_peer', '--out', str(out_json)]
            + [arg for v in variants for arg in ('--variant', v)]).stdout
  result = json.loads(out_json.read_text())
  rows = result['results']
  assert result['variants'] == [r['variant'] for r in rows] == variants
  assert [(r['impl'], r['model_impl'], r['dtype']) for r in rows] == [
      ('auto', 'fused', 'float32'), ('wavefront', 'wavefront', 'float32'),
      ('auto', 'fused', 'bfloat16'), ('auto', 'fused', 'bfloat16')]
  narrow = {k: rows[3]['resolved'][k] for k in ('saved_gates', 'gate_inputs')}
  assert narrow == {'saved_gates': 'float16', 'gate_inputs': 'bfloat16'}
  assert rows[2]['resolved']['saved_gates'] == 'float32'  # On a CPU, 'auto' does not narrow.
  # The narrowing took effect: narrower sequences, a smaller step.
  assert rows[3]['charlm_step_buffers_mb'] < rows[2]['charlm_step_buffers_mb']
  assert all(r['charlm_chars_per_s'] > 0 for r in rows)
  assert f"| 2x16 | 4x8 | model.impl=wavefront: {rows[1]['describe']} |" in out
  assert rows[1]['describe'].startswith("model.impl='wavefront' (XLA's loops")


def test_bench_internals_times_each_loop_streams_and_states(tmp_path):
  out_json = tmp_path / 'internals.json'
  out = run(['experiments/bench_internals.py', '--size', '2x16:4x8', '--streams', '1,4',
             '--kinds', 'all,h+c,none', '--chars', '300', '--rounds', '1', '--steps', '2',
             '--ablate_cells', '3', '--ablate_chars', '100', '--out', str(out_json)]).stdout
  result = json.loads(out_json.read_text())
  rows = result['rows']
  assert [(r['loop'], r['streams'], r['kinds']) for r in rows] == [
      (loop, streams, kinds) for loop in ('layers', 'steps') for streams in (1, 4)
      for kinds in ('all', 'h+c', 'none')]
  assert all(r['chars_per_s'] > 0 and len(r['rounds']) == 1 for r in rows)
  train = result['training_rounds'][0]
  assert all(r['vs_training'] == r['round_ratios'][0] == pytest.approx(r['rounds'][0] / train)
             for r in rows)  # Each round's rate against that round's training.
  assert result['training_chars_per_s'] > 0 and result['ablate']['cells'] == 3
  assert '| layers | 4 | h+c |' in out and 'ablate: 3 cells over 100 characters' in out


@pytest.mark.slow
def test_bench_dynamic_eval_sweeps_then_checks_the_best(tmp_path):
  from conftest import smoke_config

  from charlm import trainer
  workdir = str(tmp_path / 'run')
  trainer.train_and_evaluate(smoke_config(tmp_path, train__steps=5, train__eval_every=5,
                                          train__ckpt_every=5), workdir)
  out_json = tmp_path / 'dynamic.json'
  out = run(['experiments/bench_dynamic_eval.py', f'--sweep_run={workdir}', '--sweep_chars=60',
             '--lrs=0.01,0.1', '--decays=0', '--seq=16', '--grad_batches=2',
             f'--checks={workdir}:val', f'--out={out_json}']).stdout
  result = json.loads(out_json.read_text())
  assert [(r['lr'], r['decay']) for r in result['sweep']] == [(0, 0), (0.01, 0), (0.1, 0)]
  best = min(result['sweep'][1:], key=lambda r: r['loss'])
  assert result['chosen'] == {'lr': best['lr'], 'decay': best['decay']}
  check, = result['checks']
  assert check['split'] == 'val' and check['gain'] == check['static_one_stream'] - check['dynamic']
  assert '| run | split | chars |' in out


def test_benchmark_mistakes_are_one_line_errors():
  for args, error in [
      (['experiments/bench_train.py', '--variant', 'model.impl=fused,model.saved_gate=float16'],
       'error: override \'model.saved_gate=float16\': the config has no field model.saved_gate '
       '(did you mean "model.saved_gates"?)'),
      (['experiments/bench_lstm_loops.py', '--override', 'model.unroll=many'],
       "error: override 'model.unroll=many': bad value for model.unroll"),
      (['experiments/bench_lstm_loops.py', '--override', 'model.saved_gates=float16'],
       "error: model.saved_gates='float16' goes with bfloat16 matmuls")]:
    result = run(args + ['--sizes', '2x16:4x8', '--no_peer'], ok=False)
    lines = [line for line in result.stderr.splitlines() if not re.match(r'[IW]\d{4} ', line)]
    assert len(lines) == 1 and lines[0].startswith(error), result.stderr  # No traceback.
