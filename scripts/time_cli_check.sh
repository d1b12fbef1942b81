#!/usr/bin/env bash
# Runs every command of TIME Coin's `time-cli` against a running timed node,
# in its JSON and its --human output, and fails on the first command that
# exits non-zero or prints "Error".
#
#   scripts/time_cli_check.sh TIME_CLI RPC_URL TIMED [--stop]
#
# TIME_CLI: a time-cli binary (time-coin/time-masternode, src/bin/time-cli.rs;
# `cargo build --release --bin time-cli` there). RPC_URL: the node to drive,
# e.g. http://127.0.0.1:24201 from `timed devnet --nodes 3`. TIMED: the timed
# binary, for the one step time-cli has no command for (signing a raw
# transaction with the node's wallet). The node's wallet must be funded and
# the genesis must fund another wallet (any `timed devnet` node).
# With --stop, the last command is `time-cli stop`. Each command runs twice
# (JSON, then --human), so the payments and merges below happen twice.
set -euo pipefail

cli=${1:?time-cli binary}
url=${2:?RPC URL}
timed=${3:?timed binary}
stop=${4:-}

ok=0
run() {
    local out
    for mode in "" "--human"; do
        if ! out=$("$cli" --rpc-url "$url" $mode "$@" 2>&1); then
            echo "FAIL: time-cli $mode $*"
            echo "$out"
            exit 1
        fi
        if grep -q '^Error' <<<"$out"; then
            echo "FAIL: time-cli $mode $*"
            echo "$out"
            exit 1
        fi
    done
    ok=$((ok + 1))
    printf 'ok   %s\n' "$*"
}
rpc() { "$timed" rpc --rpc-url "$url/" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

own=$(rpc getnewaddress | json d)
# Another wallet the genesis funds: the recipient of the payments below.
alloc=$(rpc getblock 0 | json 'd["tx"][0]')
other=$(rpc getrawtransaction "$alloc" true | json "[o['address'] for o in d['outputs'] if o['address'] != '$own'][0]")

run getblockchaininfo
run getblockcount
run getbestblockhash
run getblockhash 1
run getblock 1
run gettxoutsetinfo
run getnetworkinfo
run getpeerinfo
run getbalance
run getwalletinfo
run getnewaddress
run listreceivedbyaddress
run listreceivedbyaddress --includeempty
run listunspent
run listunspent -n 0
run listtransactions
run listtransactions -n 3
txid=$("$cli" --rpc-url "$url" sendtoaddress "$other" 1.5 | json d)
echo "ok   sendtoaddress $other 1.5 -> $txid"
ok=$((ok + 1))
run sendtoaddress "$other" 1 --subtractfee --nowait
run gettransaction "$txid"
run getrawtransaction "$txid"
run getrawtransaction "$txid" --verbose
hex=$(rpc getrawtransaction "$txid" | json d)
run decoderawtransaction "$hex"
read -r input amount < <(rpc listunspent 1 9999999 null 0 | python3 -c "
import json, sys
c = [c for c in json.load(sys.stdin) if c['spendable']][-1]
print(json.dumps([{'txid': c['txid'], 'vout': c['vout']}], separators=(',', ':')), '%.8f' % ((c['units'] - 1000) / 1e8))")
run createrawtransaction "$input" "{\"$other\": \"$amount\"}"
unsigned=$("$cli" --rpc-url "$url" createrawtransaction "$input" "{\"$other\": \"$amount\"}" | json d)
signed=$(rpc signrawtransaction "$unsigned" | json 'd["hex"]')
"$cli" --rpc-url "$url" sendrawtransaction "$signed" >/dev/null
echo "ok   sendrawtransaction (signed by timed rpc signrawtransaction)"
ok=$((ok + 1))
run mergeutxos -m 2 -x 3
run getmempoolinfo
run getrawmempool
run getrawmempool --verbose
run masternodelist
run masternodelist --all
run masternodestatus
run masternode genkey
run masternode list
run masternode status
run listlockedcollaterals
run getconsensusinfo
run gettreasurybalance
run validateaddress "$other"
run validateaddress TIME1nope
run uptime
run getinfo
run listlockedutxos
run cleanuplockedutxos
run unlockutxo "$txid" 0
run unlockorphanedutxos
run forceunlockall
run reindextransactions
run reindex
if [ "$stop" = "--stop" ]; then
    "$cli" --rpc-url "$url" stop
    ok=$((ok + 1))
    echo "ok   stop"
fi
echo "$ok commands answered"
