#!/usr/bin/env python3
"""Writes a MaxMind DB (.mmdb) file of IP ranges to AS numbers from the CSV
files of the npm package @ip-location-db/asn.

The npm registry ships that data only as CSV (the package's .mmdb sibling
is not published there), and timed reads MaxMind DB files, so
scripts/fetch_geoip.sh converts it with this program. Standard library
only: a CI image with python3 runs it.

Input rows are `range_start,range_end,asn,organization` (inclusive ranges,
IPv4 in one file, IPv6 in the other). The output follows the MaxMind DB
format 2.0 (https://maxmind.github.io/MaxMind-DB/):

* one IPv6 search tree; IPv4 addresses live under ::/96, where readers
  look them up;
* each record is a map with the fields GeoLite2-ASN uses,
  `autonomous_system_number` (uint32) and `autonomous_system_organization`
  (string), so readers of either database read both;
* records of one (ASN, organisation) pair are stored once; adjacent ranges
  of one pair are merged before the tree is built.

Usage: asn_csv_to_mmdb.py OUT IPV4_CSV IPV6_CSV DESCRIPTION
"""

import bisect
import csv
import ipaddress
import os
import struct
import sys
import time

ASN_KEY = "autonomous_system_number"
ORG_KEY = "autonomous_system_organization"
METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
DATA_SECTION_SEPARATOR = b"\x00" * 16


class ConversionError(Exception):
    """A malformed input file, reported with its name and line."""


# ---------------------------------------------------------------------------
# Data section encoding (MaxMind DB format 2.0, "Data Section")


def _control(type_id, size):
    """The control byte(s) of a field of `type_id` holding `size`."""
    if type_id <= 7:
        first = type_id << 5
        extended = b""
    else:
        first = 0
        extended = bytes([type_id - 7])
    if size < 29:
        return bytes([first | size]) + extended
    if size < 29 + 256:
        return bytes([first | 29]) + extended + bytes([size - 29])
    if size < 285 + 65536:
        return bytes([first | 30]) + extended + (size - 285).to_bytes(2, "big")
    return bytes([first | 31]) + extended + (size - 65821).to_bytes(3, "big")


def encode_string(text):
    raw = text.encode("utf-8")
    return _control(2, len(raw)) + raw


def encode_uint(value, type_id):
    """uint16 (5), uint32 (6) or uint64 (9): big-endian, leading zeros dropped."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return _control(type_id, len(raw)) + raw


def encode_pointer(offset):
    """A pointer to `offset` in the data section."""
    if offset < 2048:
        return bytes([0x20 | (offset >> 8)]) + bytes([offset & 0xFF])
    offset -= 2048
    if offset < 1 << 19:
        return bytes([0x28 | (offset >> 16)]) + (offset & 0xFFFF).to_bytes(2, "big")
    offset -= 1 << 19
    if offset < 1 << 27:
        return bytes([0x30 | (offset >> 24)]) + (offset & 0xFFFFFF).to_bytes(3, "big")
    return bytes([0x38]) + (offset + 526336).to_bytes(4, "big")


def encode_map_header(pairs):
    return _control(7, pairs)


def encode_array_header(items):
    return _control(11, items)


# ---------------------------------------------------------------------------
# Input


def read_ranges(path, family):
    """The rows of one CSV file as (start, end, asn, organization), with
    IPv4 addresses placed under ::/96."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row:
                continue
            if len(row) < 3:
                raise ConversionError(f"{path}:{line_no}: expected start,end,asn[,org]")
            try:
                start = ipaddress.ip_address(row[0].strip())
                end = ipaddress.ip_address(row[1].strip())
                asn = int(row[2])
            except ValueError as e:
                raise ConversionError(f"{path}:{line_no}: {e}") from None
            if start.version != family or end.version != family:
                raise ConversionError(f"{path}:{line_no}: not an IPv{family} range")
            if int(end) < int(start):
                raise ConversionError(f"{path}:{line_no}: range ends before it starts")
            # AS 0 marks unrouted space (RFC 7607); such rows carry no ASN.
            if asn <= 0 or asn >= 1 << 32:
                continue
            org = row[3].strip() if len(row) > 3 else ""
            rows.append((int(start), int(end), asn, org))
    return rows


def normalise(ranges):
    """Sorted, non-overlapping ranges; adjacent ranges of one record merged.
    A range that overlaps an earlier one keeps only its part past that
    one's end. Returns (ranges, clipped), clipped counting such rows."""
    ranges.sort()
    out = []
    clipped = 0
    for start, end, asn, org in ranges:
        if out and start <= out[-1][1]:
            clipped += 1
            if end <= out[-1][1]:
                continue
            start = out[-1][1] + 1
        if out and start == out[-1][1] + 1 and out[-1][2:] == (asn, org):
            out[-1] = (out[-1][0], end, asn, org)
            continue
        out.append((start, end, asn, org))
    return out, clipped


# ---------------------------------------------------------------------------
# Search tree


def build_tree(ranges):
    """The search tree over 128-bit keys. Children are node numbers (>= 0),
    EMPTY, or -(2 + k) for the k-th distinct record. Nodes are numbered in
    preorder, the root being node 0."""
    starts = [r[0] for r in ranges]
    ends = [r[1] for r in ranges]
    record_of = {}
    records = []
    range_record = []
    for _, _, asn, org in ranges:
        key = (asn, org)
        if key not in record_of:
            record_of[key] = len(records)
            records.append(key)
        range_record.append(record_of[key])

    left = []
    right = []
    empty = -1

    def build(lo, bits, i, j):
        # ranges[i:j] are the ranges that meet [lo, lo + 2**bits - 1].
        if i == j:
            return empty
        if j - i == 1 and starts[i] <= lo and ends[i] >= lo + (1 << bits) - 1:
            return -(2 + range_record[i])
        node = len(left)
        left.append(empty)
        right.append(empty)
        mid = lo + (1 << (bits - 1))
        m = bisect.bisect_left(starts, mid, i, j)
        k = bisect.bisect_left(ends, mid, i, j)
        left[node] = build(lo, bits - 1, i, m)
        right[node] = build(mid, bits - 1, k, j)
        return node

    root = build(0, 128, 0, len(ranges))
    if root != 0:
        raise ConversionError("no ranges to write")
    return left, right, records


def write_mmdb(out_path, ranges, description):
    left, right, records = build_tree(ranges)
    node_count = len(left)

    # Data section: the two key strings once, then one map per record whose
    # keys point back at them.
    data = bytearray()
    asn_key_at = len(data)
    data += encode_string(ASN_KEY)
    org_key_at = len(data)
    data += encode_string(ORG_KEY)
    record_at = []
    for asn, org in records:
        record_at.append(len(data))
        data += encode_map_header(2)
        data += encode_pointer(asn_key_at)
        data += encode_uint(asn, 6)
        data += encode_pointer(org_key_at)
        data += encode_string(org)

    largest = node_count + len(DATA_SECTION_SEPARATOR) + len(data)
    record_size = next((s for s in (24, 28, 32) if largest < 1 << s), None)
    if record_size is None:
        raise ConversionError("database too large for 32-bit records")

    def value(child):
        if child >= 0:
            return child
        if child == -1:
            return node_count
        return node_count + len(DATA_SECTION_SEPARATOR) + record_at[-child - 2]

    tree = bytearray()
    for l, r in zip(left, right):
        l = value(l)
        r = value(r)
        if record_size == 24:
            tree += l.to_bytes(3, "big") + r.to_bytes(3, "big")
        elif record_size == 28:
            middle = ((l >> 24) << 4) | (r >> 24)
            tree += (l & 0xFFFFFF).to_bytes(3, "big") + bytes([middle])
            tree += (r & 0xFFFFFF).to_bytes(3, "big")
        else:
            tree += struct.pack(">II", l, r)

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    metadata = bytearray()
    fields = [
        ("binary_format_major_version", encode_uint(2, 5)),
        ("binary_format_minor_version", encode_uint(0, 5)),
        ("build_epoch", encode_uint(epoch, 9)),
        ("database_type", encode_string("ip-location-db-asn")),
        ("description", encode_map_header(1) + encode_string("en") + encode_string(description)),
        ("ip_version", encode_uint(6, 5)),
        ("languages", encode_array_header(1) + encode_string("en")),
        ("node_count", encode_uint(node_count, 6)),
        ("record_size", encode_uint(record_size, 5)),
    ]
    metadata += encode_map_header(len(fields))
    for key, encoded in fields:
        metadata += encode_string(key) + encoded

    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(tree)
        f.write(DATA_SECTION_SEPARATOR)
        f.write(data)
        f.write(METADATA_MARKER)
        f.write(metadata)
    os.replace(tmp, out_path)
    return node_count, record_size, len(records)


def main(argv):
    if len(argv) != 5:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    out_path, v4_csv, v6_csv, description = argv[1:]
    try:
        v4 = read_ranges(v4_csv, 4)
        v6 = read_ranges(v6_csv, 6)
        # IPv6 rows inside ::/96 would collide with the IPv4 subtree.
        clashing = [r for r in v6 if r[0] < 1 << 32]
        v6 = [r for r in v6 if r[0] >= 1 << 32]
        ranges, clipped = normalise(v4 + v6)
        node_count, record_size, record_count = write_mmdb(out_path, ranges, description)
    except (OSError, ConversionError) as e:
        print(f"asn_csv_to_mmdb: {e}", file=sys.stderr)
        return 1
    print(
        f"asn_csv_to_mmdb: {out_path}: {len(ranges)} ranges, {record_count} records, "
        f"{node_count} nodes of {record_size}-bit records "
        f"({clipped} overlapping rows clipped, {len(clashing)} IPv6 rows in ::/96 dropped)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
