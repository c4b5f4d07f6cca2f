"""A screenshot of a `charlm.visualize` page, as a reader sees it: a found cell chosen, a
character hovered.

    python -m charlm.visualize --workdir runs/shakespeare_small --out /tmp/page.html
    python experiments/screenshot_page.py /tmp/page.html experiments/results/visualize_page.png

Drives Debian's Chromium (`apt-get install chromium`) headless through Playwright, which never
downloads a browser of its own. --found picks the discovered cell shown (its position in the
list), --hover the character hovered.
"""
import argparse
import pathlib

CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('page', help='A page written by python -m charlm.visualize.')
  parser.add_argument('png', help='Where the screenshot goes.')
  parser.add_argument('--found', type=int, default=0, help='Which discovered cell to show.')
  parser.add_argument('--hover', type=int, default=300, help='Which character to hover.')
  parser.add_argument('--chromium', default='/usr/bin/chromium')
  args = parser.parse_args()
  from playwright.sync_api import sync_playwright
  with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={'width': 1280, 'height': 860})
    errors = []
    page.on('pageerror', lambda e: errors.append(str(e)))
    page.goto(pathlib.Path(args.page).resolve().as_uri())
    page.wait_for_selector('body[data-ready]', timeout=10000)
    page.locator('.found-item').nth(args.found).click()
    page.locator('#text .ch').nth(args.hover).hover()
    page.screenshot(path=args.png)
    browser.close()
  if errors:
    raise SystemExit(f'the page reported errors: {errors}')
  print(f'wrote {args.png}')


if __name__ == '__main__':
  main()
