"""PCG32 seeded through splitmix64, in plain Python: the same stream as csrc/rng.h."""

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


def _splitmix64(x: int) -> tuple[int, int]:
    """(new counter, output) of one splitmix64 step."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x, z ^ (z >> 31)


class Pcg32:
    def __init__(self, seed: int):
        if not 0 <= seed <= _MASK64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        counter, init_state = _splitmix64(seed)
        _, stream = _splitmix64(counter)
        self.inc = ((stream << 1) | 1) & _MASK64
        self.state = 0
        self.next()
        self.state = (self.state + init_state) & _MASK64
        self.next()

    def next(self) -> int:
        old = self.state
        self.state = (old * 6364136223846793005 + self.inc) & _MASK64
        xorshifted = (((old >> 18) ^ old) >> 27) & _MASK32
        rot = old >> 59
        return ((xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))) & _MASK32

    def below(self, n: int) -> int:
        """Uniform integer in [0, n) without modulo bias."""
        threshold = ((1 << 32) - n) % n
        while True:
            x = self.next()
            if x >= threshold:
                return x % n
