"""The README is the front door: short, a command early, its smoke run works as written, and every
relative link and anchor in it and in docs/ leads somewhere."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "tests" / "golden" / "README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text):
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            out.append(line)
    return out


def anchors(path):
    """The anchors GitHub gives a page's headings: lowercased, punctuation dropped, spaces to
    hyphens, repeats numbered."""
    seen, out = {}, set()
    for line in prose(path.read_text()):
        m = re.match(r"#{1,6} (.+)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_readme_is_short_with_a_command_early():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"
    first = next(i for i, line in enumerate(lines) if line.startswith("```bash"))
    assert first < 60, f"the README's first command starts at line {first + 2}"


def test_every_relative_link_and_anchor_resolves():
    assert len(PAGES) >= 10
    broken = []
    for page in PAGES:
        for line in prose(page.read_text()):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                if not dest.exists():
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
                elif anchor and anchor not in anchors(dest):
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def smoke_commands():
    """The commands of the README's block marked <!-- smoke -->, continuation lines joined."""
    text = README.read_text()
    block = re.search(r"<!-- smoke -->\n```bash\n(.*?)\n```", text, re.S)
    assert block, "README.md has no ```bash block after <!-- smoke -->"
    return [shlex.split(line, comments=True) for line in block.group(1).replace("\\\n", " ").splitlines()
            if line.strip()]


def test_readme_smoke_run_works_as_written(env, tmp_path):
    """Each command of the README's smoke run exits 0 (on the test's own database, outputs in a
    scratch folder), and its plots are written."""
    commands = smoke_commands()
    assert [c[1] for c in commands] == ["data.py", "train.py", "eval.py", "report.py", "admin.py"]
    work = tmp_path / "work"
    work.mkdir()
    for argv in commands:
        assert argv[0] == ".venv/bin/python", argv
        cmd = [sys.executable, str(ROOT / argv[1]), *argv[2:]]
        r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1800, env=os.environ.copy())
        assert r.returncode == 0, f"{shlex.join(argv)} exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        for i, arg in enumerate(argv[:-1]):
            if arg == "--out":
                assert (work / argv[i + 1]).stat().st_size > 0, argv[i + 1]
    assert "smoke" in r.stdout and "finished" in r.stdout  # admin.py list-all shows the finished run


def test_laptop_tables_are_the_committed_results():
    """Each table docs/laptop.md names a `models_table.py` command for (v2's three, and each later
    protocol's) is what that command prints from the committed results today: a model added to the
    results and not to the page, or a figure edited by hand, fails."""
    page = (ROOT / "docs" / "laptop.md").read_text()
    commands = re.findall(r"`python experiments/models_table\.py (experiments/results/[\w.-]+)((?: --[\w-]+)?)`", page)
    assert ("experiments/results/eff6v2", " --claim-a") in commands, commands
    for folder, flag in commands:
        out = subprocess.run([sys.executable, str(ROOT / "experiments" / "models_table.py"), str(ROOT / folder),
                              *flag.split()], capture_output=True, text=True, check=True).stdout.strip("\n")
        assert out.count("\n") > 2 and out in page, f"models_table.py {folder}{flag} differs from docs/laptop.md"
