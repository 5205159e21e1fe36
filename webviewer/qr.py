"""A minimal QR Code encoder (ISO/IEC 18004) for the ``serve --host 0.0.0.0`` banner.

Byte mode, error-correction level L, versions 1-10 (up to 271 bytes - a LAN URL needs ~30), all
eight masks scored with the standard penalty rules. :func:`qr_matrix` returns the module matrix
(True = dark), :func:`qr_terminal` renders it for a terminal with half-block characters, two modules
per character cell vertically, inside the 4-module quiet zone.

Written here (about 200 lines) rather than adding a dependency for one banner; the tests decode its
output with ``zbarimg`` where that tool is installed.
"""
from __future__ import annotations

# version -> (EC codewords per block, [(number of blocks, data codewords per block), ...]) for level L
_EC_L: dict[int, tuple[int, list[tuple[int, int]]]] = {
    1: (7, [(1, 19)]), 2: (10, [(1, 34)]), 3: (15, [(1, 55)]), 4: (20, [(1, 80)]), 5: (26, [(1, 108)]),
    6: (18, [(2, 68)]), 7: (20, [(2, 78)]), 8: (24, [(2, 97)]), 9: (30, [(2, 116)]),
    10: (18, [(2, 68), (2, 69)]),
}
_ALIGN: dict[int, list[int]] = {
    1: [], 2: [6, 18], 3: [6, 22], 4: [6, 26], 5: [6, 30], 6: [6, 34], 7: [6, 22, 38], 8: [6, 24, 42],
    9: [6, 26, 46], 10: [6, 28, 50],
}
_EC_LEVEL_L_BITS = 0b01
MAX_VERSION = max(_EC_L)


def _gf_mul(x: int, y: int) -> int:
    """Multiplication in GF(2^8) modulo x^8 + x^4 + x^3 + x^2 + 1 (0x11D)."""
    z = 0
    for i in reversed(range(8)):
        z = (z << 1) ^ ((z >> 7) * 0x11D)
        z ^= ((y >> i) & 1) * x
    return z & 0xFF


def _rs_divisor(degree: int) -> list[int]:
    """Coefficients (highest first, leading 1 dropped) of prod_{i<degree} (x - 2^i)."""
    result = [0] * (degree - 1) + [1]
    root = 1
    for _ in range(degree):
        for j in range(degree):
            result[j] = _gf_mul(result[j], root)
            if j + 1 < degree:
                result[j] ^= result[j + 1]
        root = _gf_mul(root, 0x02)
    return result


def _rs_remainder(data: list[int], divisor: list[int]) -> list[int]:
    result = [0] * len(divisor)
    for b in data:
        factor = b ^ result.pop(0)
        result.append(0)
        for i, coef in enumerate(divisor):
            result[i] ^= _gf_mul(coef, factor)
    return result


def _data_capacity(version: int) -> int:
    return sum(n * k for n, k in _EC_L[version][1])


def _codewords(data: bytes, version: int) -> list[int]:
    """Data bits (mode, count, bytes, terminator, padding) split in blocks with EC, interleaved."""
    count_bits = 8 if version <= 9 else 16
    bits: list[int] = []

    def put(value: int, n: int) -> None:
        bits.extend((value >> i) & 1 for i in reversed(range(n)))

    put(0b0100, 4)
    put(len(data), count_bits)
    for b in data:
        put(b, 8)
    capacity = _data_capacity(version) * 8
    put(0, min(4, capacity - len(bits)))
    put(0, -len(bits) % 8)
    words = [int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8)]
    pad = 0xEC
    while len(words) < capacity // 8:
        words.append(pad)
        pad ^= 0xEC ^ 0x11
    ec_len, layout = _EC_L[version]
    divisor = _rs_divisor(ec_len)
    blocks, start = [], 0
    for n, k in layout:
        for _ in range(n):
            block = words[start:start + k]
            start += k
            blocks.append((block, _rs_remainder(block, divisor)))
    out = []
    for i in range(max(len(b) for b, _ in blocks)):
        out.extend(b[i] for b, _ in blocks if i < len(b))
    for i in range(ec_len):
        out.extend(e[i] for _, e in blocks)
    return out


class _Grid:
    def __init__(self, version: int):
        self.version = version
        self.size = 4 * version + 17
        self.dark = [[False] * self.size for _ in range(self.size)]
        self.function = [[False] * self.size for _ in range(self.size)]

    def set(self, x: int, y: int, dark: bool) -> None:
        self.dark[y][x] = dark
        self.function[y][x] = True

    def draw_function_patterns(self) -> None:
        s = self.size
        for i in range(s):  # timing patterns
            self.set(6, i, i % 2 == 0)
            self.set(i, 6, i % 2 == 0)
        for cx, cy in ((3, 3), (s - 4, 3), (3, s - 4)):  # finders with their separators
            for dy in range(-4, 5):
                for dx in range(-4, 5):
                    x, y = cx + dx, cy + dy
                    if 0 <= x < s and 0 <= y < s:
                        d = max(abs(dx), abs(dy))
                        self.set(x, y, d not in (2, 4))
        pos = _ALIGN[self.version]
        for i, ax in enumerate(pos):
            for j, ay in enumerate(pos):
                if (i, j) in ((0, 0), (0, len(pos) - 1), (len(pos) - 1, 0)):
                    continue
                for dy in range(-2, 3):
                    for dx in range(-2, 3):
                        self.set(ax + dx, ay + dy, max(abs(dx), abs(dy)) != 1)
        self.draw_format(0)  # reserve the format areas (real bits drawn after masking)
        if self.version >= 7:
            rem = self.version
            for _ in range(12):
                rem = (rem << 1) ^ ((rem >> 11) * 0x1F25)
            bits = self.version << 12 | rem
            for i in range(18):
                bit = (bits >> i) & 1 == 1
                a, b = s - 11 + i % 3, i // 3
                self.set(a, b, bit)
                self.set(b, a, bit)

    def draw_format(self, mask: int) -> None:
        data = _EC_LEVEL_L_BITS << 3 | mask
        rem = data
        for _ in range(10):
            rem = (rem << 1) ^ ((rem >> 9) * 0x537)
        bits = (data << 10 | rem) ^ 0x5412
        s = self.size

        def bit(i: int) -> bool:
            return (bits >> i) & 1 == 1

        for i in range(6):
            self.set(8, i, bit(i))
        self.set(8, 7, bit(6))
        self.set(8, 8, bit(7))
        self.set(7, 8, bit(8))
        for i in range(9, 15):
            self.set(14 - i, 8, bit(i))
        for i in range(8):
            self.set(s - 1 - i, 8, bit(i))
        for i in range(8, 15):
            self.set(8, s - 15 + i, bit(i))
        self.set(8, s - 8, True)  # the dark module

    def draw_codewords(self, words: list[int]) -> None:
        s, i, total = self.size, 0, len(words) * 8
        right = s - 1
        while right >= 1:
            if right == 6:
                right = 5
            upward = ((right + 1) & 2) == 0
            for vert in range(s):
                y = s - 1 - vert if upward else vert
                for j in range(2):
                    x = right - j
                    if not self.function[y][x] and i < total:
                        self.dark[y][x] = (words[i >> 3] >> (7 - (i & 7))) & 1 == 1
                        i += 1
            right -= 2

    def apply_mask(self, mask: int) -> None:
        rule = _MASKS[mask]
        for y in range(self.size):
            for x in range(self.size):
                if not self.function[y][x] and rule(x, y):
                    self.dark[y][x] = not self.dark[y][x]


_MASKS = (
    lambda x, y: (x + y) % 2 == 0,
    lambda x, y: y % 2 == 0,
    lambda x, y: x % 3 == 0,
    lambda x, y: (x + y) % 3 == 0,
    lambda x, y: (x // 3 + y // 2) % 2 == 0,
    lambda x, y: x * y % 2 + x * y % 3 == 0,
    lambda x, y: (x * y % 2 + x * y % 3) % 2 == 0,
    lambda x, y: ((x + y) % 2 + x * y % 3) % 2 == 0,
)
_FINDER_LIKE = ([True, False, True, True, True, False, True, False, False, False, False],
                [False, False, False, False, True, False, True, True, True, False, True])


def _penalty(m: list[list[bool]]) -> int:
    s = len(m)
    score = 0
    lines = m + [[m[y][x] for y in range(s)] for x in range(s)]
    for line in lines:
        run = 1
        for i in range(1, s + 1):
            if i < s and line[i] == line[i - 1]:
                run += 1
                continue
            if run >= 5:
                score += 3 + run - 5
            run = 1
        for i in range(s - 10):
            if line[i:i + 11] in _FINDER_LIKE:
                score += 40
    for y in range(s - 1):
        for x in range(s - 1):
            if m[y][x] == m[y][x + 1] == m[y + 1][x] == m[y + 1][x + 1]:
                score += 3
    dark = sum(map(sum, m))
    score += 10 * (abs(dark * 100 // (s * s) - 50) // 5)
    return score


def qr_matrix(text: str | bytes, mask: int | None = None) -> list[list[bool]]:
    """The QR code of ``text`` (UTF-8) as rows of modules, True = dark (no quiet zone).

    The smallest version 1-10 that holds the data at error correction level L is used; ``mask``
    forces a mask pattern (0-7), otherwise the one with the lowest penalty is chosen.
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    for version in range(1, MAX_VERSION + 1):
        header_bits = 4 + (8 if version <= 9 else 16)
        if header_bits + 8 * len(data) <= 8 * _data_capacity(version):
            break
    else:
        raise ValueError(f"text of {len(data)} bytes is too long for a version {MAX_VERSION} QR code")
    words = _codewords(data, version)
    best = None
    for m in range(8) if mask is None else (mask,):
        grid = _Grid(version)
        grid.draw_function_patterns()
        grid.draw_codewords(words)
        grid.apply_mask(m)
        grid.draw_format(m)
        score = _penalty(grid.dark)
        if best is None or score < best[0]:
            best = (score, grid.dark)
    return best[1]


def qr_terminal(text: str, *, ansi: bool = True, quiet: int = 4) -> str:
    """``text`` as a QR code for a terminal: one character per module column, two module rows each.

    With ``ansi`` every cell is coloured explicitly (black on bright white), so the code reads on
    dark and light terminals alike; without, dark modules are drawn as blocks (for light
    backgrounds, e.g. a log file).
    """
    m = qr_matrix(text)
    n = len(m) + 2 * quiet
    grid = [[False] * n for _ in range(quiet)]
    grid += [[False] * quiet + row + [False] * quiet for row in m]
    grid += [[False] * n for _ in range(quiet + (n % 2))]
    lines = []
    for y in range(0, len(grid), 2):
        top, bottom = grid[y], grid[y + 1]
        if ansi:
            cells = []
            for t, b in zip(top, bottom):
                fg = "30" if t else "97"
                bg = "40" if b else "107"
                cells.append(f"\x1b[{fg};{bg}m\u2580")
            lines.append("".join(cells) + "\x1b[0m")
        else:
            lines.append("".join(" \u2584\u2580\u2588"[2 * t + b] for t, b in zip(top, bottom)).rstrip())
    return "\n".join(lines)


__all__ = ["qr_matrix", "qr_terminal", "MAX_VERSION"]
