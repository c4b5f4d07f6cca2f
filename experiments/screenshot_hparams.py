"""A screenshot of TensorBoard's HParams dashboard over a sweep's runs, as `make tb` shows it.

    python -m charlm.sweep --config ... --name NAME          # any finished sweep
    python experiments/screenshot_hparams.py runs/sweeps/NAME experiments/results/hparams.png

Starts TensorBoard (the dev extra's) on the sweep directory at a free local port, opens its
HParams tab in Debian's Chromium (`apt-get install chromium`) headless through Playwright,
which never downloads a browser of its own, waits for the table, hides the columns --hide
names and shows those --show names, and saves the page. --view picks the table or the
parallel-coordinates view.
"""
import argparse
import os
import socket
import subprocess
import sys
import time

from screenshot_page import CHROMIUM_ARGS


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('logdir', help='A sweep directory (or any logdir of runs).')
  parser.add_argument('png', help='Where the screenshot goes.')
  parser.add_argument('--view', choices=['table', 'parallel'], default='table')
  parser.add_argument('--chromium', default='/usr/bin/chromium')
  parser.add_argument('--timeout', type=float, default=90, help='Seconds to wait for the runs.')
  parser.add_argument('--hide', nargs='*', default=[], help='Hyperparameters and metrics whose '
                      'columns to hide (the same in every run, say).')
  parser.add_argument('--show', nargs='*', default=['val/loss', 'val/bpc'],
                      help='Columns to show that TensorBoard leaves hidden at first.')
  parser.add_argument('--width', type=int, default=1600)
  args = parser.parse_args()
  runs = sum('events.out.tfevents' in ' '.join(files) for _, _, files in os.walk(args.logdir))
  if not runs:
    raise SystemExit(f'no TensorBoard event files under {args.logdir}')
  port = free_port()
  tensorboard = os.path.join(os.path.dirname(sys.executable), 'tensorboard')
  server = subprocess.Popen([tensorboard, '--logdir', args.logdir, '--port', str(port),
                             '--host', '127.0.0.1', '--reload_interval', '1'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
      page = browser.new_page(viewport={'width': args.width, 'height': 900})
      deadline = time.time() + args.timeout
      while True:  # TensorBoard needs a moment to start and to read the runs.
        try:
          page.goto(f'http://127.0.0.1:{port}/#hparams', timeout=10000)
          break
        except Exception:
          if time.time() > deadline:
            raise
          time.sleep(1)
      page.get_by_text('Trial ID').wait_for(timeout=args.timeout * 1000)
      time.sleep(3)  # The table fills in as TensorBoard reads the runs.
      for name in args.hide:  # Columns that say nothing (the same in every run).
        page.get_by_role('checkbox', name=name, exact=True).uncheck()
      for name in args.show:
        page.get_by_role('checkbox', name=name, exact=True).check()
      page.mouse.move(0, 0)
      if args.view == 'parallel':
        page.get_by_text('PARALLEL COORDINATES VIEW').click()
        time.sleep(3)
      page.screenshot(path=args.png, full_page=True)
      browser.close()
  finally:
    server.terminate()
    server.wait()
  print(f'wrote {args.png} ({runs} runs)')


if __name__ == '__main__':
  main()
