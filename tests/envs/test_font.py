import subprocess
import sys
from pathlib import Path

from fastvlmrl.envs import font

ROOT = Path(__file__).resolve().parents[2]


def test_c_font_header_is_generated_from_the_python_font():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_font.py"), "--check"], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def test_glyphs_cover_what_the_games_write():
    needed = set("Target: Current: Formula: Dealer Player 0123456789+-*/()=AJQK?")
    assert needed <= set(font.CHARSET)
    assert len(font.SUIT_BITS) == 4
