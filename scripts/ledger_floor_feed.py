#!/usr/bin/env python3
"""RESP for `redis-cli --pipe`: FCALLs of a ledger_floor.lua function (make bench's ledger floor).

usage: ledger_floor_feed.py FUNCTION KEY FIELDS PER_CALL USER_DIGITS VALUE_DIGITS > feed.resp

FIELDS (user, value) pairs in calls of PER_CALL pairs: users and values are distinct
decimal numbers of USER_DIGITS and VALUE_DIGITS digits, the lengths of a real ledger's
user and order id, so Redis makes strings of the same sizes as for a sale.
"""
import sys


def bulk(text):
    return b"$%d\r\n%s\r\n" % (len(text), text)


def main():
    if len(sys.argv) != 7:
        sys.exit(__doc__)
    function, key = sys.argv[1].encode(), sys.argv[2].encode()
    try:
        fields, per_call, user_digits, value_digits = (int(a) for a in sys.argv[3:])
    except ValueError:
        sys.exit("ledger_floor_feed.py: FIELDS, PER_CALL and the digits must be whole numbers\n" + __doc__)
    if fields < 1 or per_call < 1 or not 1 <= user_digits <= 19 or not 1 <= value_digits <= 19:
        sys.exit("ledger_floor_feed.py: FIELDS and PER_CALL must be positive, the digits 1..19")
    # The smallest numbers with that many digits, counting up: distinct and of one length
    # while fewer than 9 * 10^(digits - 1) are needed.
    user, value = 10 ** (user_digits - 1), 10 ** (value_digits - 1)
    out = sys.stdout.buffer
    left = fields
    while left > 0:
        n = min(per_call, left)
        parts = [b"*%d\r\n" % (4 + 2 * n), bulk(b"FCALL"), bulk(function), bulk(b"1"), bulk(key)]
        for i in range(n):
            parts.append(bulk(b"%d" % (user + i)))
            parts.append(bulk(b"%d" % (value + i)))
        out.write(b"".join(parts))
        user, value, left = user + n, value + n, left - n


if __name__ == "__main__":
    main()
