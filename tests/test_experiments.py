"""The speed tools under experiments/: the train benchmark's variants, the LSTM loop candidates
and the step profiler."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'experiments'))


def test_covered_time_counts_overlaps_once():
  import profile_step
  assert profile_step.covered_us([]) == 0
  assert profile_step.covered_us([(10, 5), (0, 4), (2, 4), (12, 1), (14, 3)]) == 6 + 7


def run(args):
  result = subprocess.run([sys.executable] + args, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, 'JAX_NUM_CPU_DEVICES': '1'})
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


def test_profile_step_names_the_operations_of_a_step(tmp_path):
  out = run(['experiments/profile_step.py', '--size', '2x16:4x8', '--profile_steps', '2',
             '--top', '5', '--trace_dir', str(tmp_path / 'trace'), '--set_loops',
             'wavefront/bm:2:2+remainder'])
  assert ' 2x16:4x8 wavefront:float32, loops (False, 2, 2): ' in out  # The candidate's impl.
  ops = out[out.index('| operation |'):].splitlines()[2:7]
  assert len(ops) == 5 and all(float(line.split('|')[2]) >= 0 for line in ops), out
  assert list((tmp_path / 'trace').rglob('*.trace.json.gz'))


def test_lstm_loop_candidates_are_timed_against_the_first(tmp_path):
  out_json = tmp_path / 'loops.json'
  run(['experiments/bench_lstm_loops.py', '--sizes', '2x16:16x8,2x16:2x8', '--loops',
       'native,bm:3:2,wavefront/bm:4:4+remainder+bf16gx,bm:2:2+remainder+f16t', '--dtype',
       'float32', '--rounds', '3', '--max_seconds', '1e-6', '--steps', '2', '--no_peer',
       '--bench_out', str(out_json)])
  rows = json.loads(out_json.read_text())['results']
  assert [(r['size'], r['loops'], r['impl']) for r in rows[:4]] == [
      ('2x16:16x8', 'native', 'fused'), ('2x16:16x8', 'bm:3:2', 'fused'),
      ('2x16:16x8', 'wavefront/bm:4:4+remainder+bf16gx', 'wavefront'),
      ('2x16:16x8', 'bm:2:2+remainder+f16t', 'fused')]
  assert [r['options'] for r in rows[:4]] == [
      [], [], ['bf16gx', 'remainder'], ['f16t', 'remainder']]
  # The second size: the baseline and the first size's fastest other candidate.
  assert [(r['size'], r['loops']) for r in rows[4:5]] == [('2x16:2x8', 'native')]
  assert len(rows) == 6 and rows[5]['loops'] in [r['loops'] for r in rows[1:4]]
  assert rows[0]['vs_first'] == 1 and all(r['chars_per_s'] > 0 for r in rows)
  assert all(len(r['rounds']) == 1 for r in rows)  # --max_seconds stopped the rounds.


@pytest.mark.parametrize('text,error', [
    ('wavefront/fm:2:1', 'batch-major only'), ('bm:8:8+f16t+f16t', 'at most once'),
    ('bm:8:8+bf16gx+f32gx', 'at most once'), ('fm:2', 'LOOPS is'),
    ('bm:8:8+fast', 'options are'), ('scan/bm:8:8', 'use ')])
def test_lstm_loop_candidates_that_cannot_run_are_refused(text, error):
  import bench_lstm_loops
  from absl import app
  with pytest.raises(app.UsageError, match=error):
    bench_lstm_loops.parse_candidate(text)
  assert bench_lstm_loops.parse_candidate('bm:8:8+remainder+f32t') == (
      'fused', 'bm:8:8', {'remainder', 'f32t'})
  assert bench_lstm_loops.parse_candidate('wavefront/bm:8:8+f16t+bf16gx') == (
      'wavefront', 'bm:8:8', {'f16t', 'bf16gx'})


def test_bench_options_set_their_settings_and_leave_the_rest_at_defaults(monkeypatch):
  import bench_train

  from charlm import lstm_kernel
  from charlm import model as model_lib
  for (module, setting), value in bench_train.charlm_defaults().items():  # Restored after.
    monkeypatch.setattr(f'charlm.{module}.{setting}', value)
  bench_train.set_options({'f32gx', 'remainder'})
  assert model_lib.GATE_INPUTS_BFLOAT16 is False and lstm_kernel.UNROLL_DIVIDES is False
  assert lstm_kernel.SAVED_GATES_FLOAT16 is None  # On GPUs only.
  bench_train.set_options({'f16t'})
  assert lstm_kernel.SAVED_GATES_FLOAT16 is True and lstm_kernel.UNROLL_DIVIDES is True
  assert model_lib.GATE_INPUTS_BFLOAT16 is None


def test_bench_train_times_each_variant(tmp_path):
  out_json = tmp_path / 'train.json'
  out = run(['experiments/bench_train.py', '--sizes', '2x16:4x8', '--variants',
             'fused:float32,wavefront:float32,auto:float32,fused:bfloat16,'
             'fused:bfloat16+bf16gx+f16t', '--rounds', '1', '--steps', '2', '--no_peer', '--out',
             str(out_json)])
  rows = json.loads(out_json.read_text())['results']
  assert [(r['variant'], r['impl'], r['dtype']) for r in rows] == [
      ('fused:float32', 'fused', 'float32'), ('wavefront:float32', 'wavefront', 'float32'),
      ('auto:float32', 'auto', 'float32'), ('fused:bfloat16', 'fused', 'bfloat16'),
      ('fused:bfloat16+bf16gx+f16t', 'fused', 'bfloat16')]
  assert [r['model_impl'] for r in rows][:3] == ['fused', 'wavefront', 'fused']  # 'auto': f32.
  assert [r['options'] for r in rows][3:] == [[], ['bf16gx', 'f16t']]
  # The options took effect: narrower sequences, a smaller step.
  assert rows[4]['charlm_step_buffers_mb'] < rows[3]['charlm_step_buffers_mb']
  assert all(r['charlm_chars_per_s'] > 0 for r in rows)
  assert '| 2x16 | 4x8 | wavefront:float32 |' in out
  bad = subprocess.run([sys.executable, 'experiments/bench_train.py', '--variants',
                        'fused', '--no_peer', '--out', ''], cwd=ROOT,
                       capture_output=True, text=True)
  assert bad.returncode != 0 and 'fused: use IMPL:DTYPE' in bad.stderr
  import bench_train
  from absl import app
  with pytest.raises(app.UsageError, match='at most once'):
    bench_train.parse_variant('wavefront:bfloat16+f16t+f32t')
  with pytest.raises(app.UsageError, match='options are'):
    bench_train.parse_variant('fused:float32+fast')
