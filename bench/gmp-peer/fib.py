#!/usr/bin/env python3
"""One GMP side of bench/fib-gmp: F(N) with its decimal digits.

gmpy2.fib(n) (GMP's mpz_fib_ui) then .digits(10) (mpz_get_str), a warm-up
call and a timed one, then the same line as `micro --fib N`:
N DIGITS SECONDS VMHWM_KIB START_KIB HEAD TAIL
"""
import sys
import time

import gmpy2


def status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    n = int(sys.argv[1])
    start_kib = status_kib("VmRSS")
    gmpy2.fib(n).digits(10)
    start = time.perf_counter()
    digits = gmpy2.fib(n).digits(10)
    seconds = time.perf_counter() - start
    hwm_kib = status_kib("VmHWM")
    print(n, len(digits), f"{seconds:.6f}", hwm_kib, start_kib, digits[:10], digits[-10:])


if __name__ == "__main__":
    main()
