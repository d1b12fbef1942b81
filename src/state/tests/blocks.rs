//! Unit tests of blocks: production, validation, refusals, competing
//! branches and reorgs.
use super::*;

// ----- blocks -------------------------------------------------------------

#[test]
fn produced_blocks_hold_only_final_transactions_and_apply_elsewhere() {
    let net = Net::new(3, 2);
    let (a, b) = (&net.chains[0], &net.chains[1]);
    let to = address();
    let final_tx = pay(a, &net.wallets[0], to, 7 * COIN, 2 * MIN_FEE);
    let pending_tx = pay(a, &net.wallets[1], to, 3 * COIN, MIN_FEE);
    let (f, _) = a.submit_tx(final_tx.clone()).unwrap();
    let (p, _) = a.submit_tx(pending_tx.clone()).unwrap();
    b.submit_tx(final_tx.clone()).unwrap();
    assert_eq!(
        a.handle_vote(net.key(1), accept(f)).unwrap(),
        VoteHandled::Counted(VoteOutcome::Finalized)
    );
    assert!(!durable_tally(a, &p).finalized);

    let slot = net.slot_of(0, 0);
    // Not a's slot: nothing.
    let others = net.slot_of(1, 0);
    assert!(a
        .produce_if_scheduled(net.genesis.slot_start(others))
        .unwrap()
        .is_none());
    let block = net.produce(0, slot);
    assert_eq!(block.header.height, 1);
    assert_eq!(block.header.prev_hash, net.genesis.hash());
    assert_eq!(block.header.timestamp, net.genesis.slot_start(slot));
    assert_eq!(block.transactions, vec![final_tx.clone()]);
    assert_eq!(a.tip().hash, block.hash());
    // Once per slot.
    assert!(a
        .produce_if_scheduled(net.genesis.slot_start(slot))
        .unwrap()
        .is_none());
    // A non-masternode never produces.
    let mut net = net;
    let observer = net.observer(ChainOptions::default());
    assert!(!observer.is_masternode());

    let (a, b, c) = (&net.chains[0], &net.chains[1], &net.chains[2]);
    for chain in [b, c, &observer] {
        assert_eq!(
            chain.handle_block(block.clone(), "gossip").unwrap(),
            BlockOutcome::Applied
        );
        assert_eq!(chain.tip(), a.tip());
    }
    assert_eq!(
        b.handle_block(block.clone(), "gossip").unwrap(),
        BlockOutcome::Known
    );
    assert_eq!(
        a.handle_block(block.clone(), "gossip").unwrap(),
        BlockOutcome::Known
    );
    for chain in [a, b, c, &observer] {
        let store = chain.store();
        assert_eq!(store.balance(&to).unwrap(), 7 * COIN);
        assert_eq!(
            store.balance(&net.wallets[0].address()).unwrap(),
            FUNDS - 7 * COIN - 2 * MIN_FEE
        );
        assert_eq!(store.balance(&net.wallets[1].address()).unwrap(), FUNDS);
        assert_eq!(
            chain.transaction(&f).unwrap(),
            Some(TxStatus::InBlock(1, final_tx.clone()))
        );
        assert!(!chain.mempool_txids().contains(&f));
    }
    assert!(b.mempool_txids().is_empty());
    assert_eq!(a.mempool_txids(), vec![p]);
    assert_eq!(
        a.transaction(&p).unwrap(),
        Some(TxStatus::Pooled(pending_tx.clone()))
    );
    // In the chain now: submitting it again is refused, votes are late.
    assert!(matches!(
        b.submit_tx(final_tx.clone()),
        Err(ChainError::AlreadyInChain)
    ));
    assert_eq!(
        a.handle_vote(net.key(2), accept(f)).unwrap(),
        VoteHandled::Late
    );

    // The pending one becomes final and goes into a's next block.
    assert_eq!(
        a.handle_vote(net.key(2), accept(p)).unwrap(),
        VoteHandled::Counted(VoteOutcome::Finalized)
    );
    let next = net.produce(0, net.slot_of(0, slot));
    assert_eq!(next.header.height, 2);
    assert_eq!(next.transactions, vec![pending_tx.clone()]);
    for chain in [b, c] {
        assert_eq!(
            chain.handle_block(next.clone(), "gossip").unwrap(),
            BlockOutcome::Applied
        );
        assert_eq!(chain.store().balance(&to).unwrap(), 10 * COIN);
        assert_eq!(
            chain.transaction(&p).unwrap(),
            Some(TxStatus::InBlock(2, pending_tx.clone()))
        );
    }
    assert!(a.mempool_txids().is_empty());
}

#[test]
fn a_block_removes_conflicting_pool_transactions() {
    let net = Net::new(2, 1);
    let (a, b) = (&net.chains[0], &net.chains[1]);
    let wallet = &net.wallets[0];
    let spendable = a.spendable(&wallet.address()).unwrap();
    let first = wallet
        .build_payment(a.magic(), &spendable, address(), COIN, MIN_FEE)
        .unwrap();
    let second = wallet
        .build_payment(a.magic(), &spendable, address(), COIN, MIN_FEE)
        .unwrap();
    a.submit_tx(first.clone()).unwrap();
    a.handle_vote(net.key(1), accept(first.txid())).unwrap();
    // b saw the other spend first.
    b.submit_tx(second.clone()).unwrap();
    let block = net.produce(0, net.slot_of(0, 0));
    assert_eq!(block.transactions, vec![first]);
    assert_eq!(
        b.handle_block(block, "gossip").unwrap(),
        BlockOutcome::Applied
    );
    assert!(b.mempool_txids().is_empty());
    assert_eq!(b.transaction(&second.txid()).unwrap(), None);
    assert_eq!(tally(b, &second.txid()), (0, 0, 0, false));
}

#[test]
fn a_double_spend_is_refused_and_voted_down() {
    let net = Net::new(3, 1);
    let (a, b) = (&net.chains[0], &net.chains[1]);
    let wallet = &net.wallets[0];
    let spendable = a.spendable(&wallet.address()).unwrap();
    let first = wallet
        .build_payment(a.magic(), &spendable, address(), COIN, MIN_FEE)
        .unwrap();
    let second = wallet
        .build_payment(a.magic(), &spendable, address(), 2 * COIN, 5 * MIN_FEE)
        .unwrap();
    assert_eq!(first.inputs[0].prevout, second.inputs[0].prevout);
    let published = capture(a);
    let (id1, _) = a.submit_tx(first.clone()).unwrap();
    let id2 = second.txid();
    let err = a.submit_tx(second.clone()).unwrap_err();
    assert!(
        matches!(err, ChainError::Mempool(MempoolError::Conflict(id)) if id == id1),
        "{err:?}"
    );
    assert_eq!(err.fault(), None, "an honest relay may send a conflict");
    assert_eq!(err.kind(), "conflict");
    assert_eq!(a.mempool_txids(), vec![id1]);
    // a accepted the first and voted the second down.
    assert_eq!(published_votes(&published), vec![accept(id1), reject(id2)]);

    // b saw the second first: a's reject counts against it there.
    b.submit_tx(second).unwrap();
    assert_eq!(
        b.handle_vote(net.key(0), reject(id2)).unwrap(),
        VoteHandled::Counted(VoteOutcome::Counted)
    );
    assert_eq!(tally(b, &id2), (1, 1, 2, false));

    // Once the first is in a block, the second spends a missing output.
    a.handle_vote(net.key(2), accept(id1)).unwrap();
    let block = net.produce(0, net.slot_of(0, 0));
    assert_eq!(block.transactions, vec![first]);
    let c = &net.chains[2];
    c.handle_block(block, "gossip").unwrap();
    let late = c
        .submit_tx(
            wallet
                .build_payment(c.magic(), &spendable, address(), COIN, MIN_FEE)
                .unwrap(),
        )
        .unwrap_err();
    assert!(matches!(
        late,
        ChainError::Tx(TxError::MissingInput { index: 0 })
    ));
    assert_eq!(late.fault(), None, "a relay race, not an offence");
}

#[test]
fn invalid_transactions_are_refused_as_invalid_data() {
    let net = Net::new(1, 1);
    let chain = &net.chains[0];
    let tx = pay(chain, &net.wallets[0], address(), COIN, MIN_FEE);
    let mut forged = tx.clone();
    forged.outputs[0].value += 1;
    let err = chain.submit_tx(forged).unwrap_err();
    assert!(matches!(
        err,
        ChainError::Tx(TxError::Signature { index: 0, .. })
    ));
    assert_eq!(err.fault(), Some(Fault::Invalid));
    let mut cheap = tx.clone();
    cheap.outputs.last_mut().unwrap().value += MIN_FEE;
    cheap.sign(chain.magic(), &[net.wallets[0].secret_key()]);
    assert!(matches!(
        chain.submit_tx(cheap),
        Err(ChainError::Tx(TxError::InsufficientFee { .. }))
    ));
    assert!(matches!(
        Chain::decode_tx(b"not a transaction"),
        Err(ChainError::Encoding {
            what: "transaction",
            ..
        })
    ));
    assert_eq!(chain.mempool_size(), (0, 0));
    assert_eq!(tally(chain, &tx.txid()), (0, 0, 0, false));
}

// ----- invalid blocks -----------------------------------------------------

#[test]
fn invalid_blocks_are_refused_with_their_reason_and_change_nothing() {
    let mut net = Net::new(2, 1);
    let node = net.observer(ChainOptions::default());
    let magic = node.magic();
    let g = net.genesis.clone();
    let parent = (g.hash(), 0);
    let p1 = net.producer_of(1);
    let other = 1 - p1;
    let t1 = g.slot_start(1);
    let tx = pay(&node, &net.wallets[0], address(), COIN, MIN_FEE);
    let good = net.block(p1, parent, t1, vec![tx.clone()]);

    // Wrong producer: signed correctly, by the masternode of another slot.
    assert_refused(
        &node,
        net.block(other, parent, t1, vec![tx.clone()]),
        &BlockError::WrongProducer { slot: 1 },
    );
    // Bad signatures: a flipped byte; the right producer's key, another's
    // signature.
    let mut flipped = good.clone();
    flipped.header.signature[10] ^= 0x01;
    assert_refused(&node, flipped, &BlockError::Signature);
    let mut forged = good.clone();
    net.resign(&mut forged, other);
    assert_refused(&node, forged, &BlockError::Signature);
    // A header change after signing.
    let mut unsigned = good.clone();
    unsigned.header.timestamp += 1;
    assert_refused(&node, unsigned, &BlockError::Signature);
    // Version.
    let mut v2 = good.clone();
    v2.header.version = 2;
    net.resign(&mut v2, p1);
    assert_refused(&node, v2, &BlockError::Version(2));
    // Linkage.
    let mut unlinked = good.clone();
    unlinked.header.prev_hash = [7; 32];
    net.resign(&mut unlinked, p1);
    assert_refused(&node, unlinked, &BlockError::Linkage { height: 1 });
    // Merkle root: a changed root, or a changed transaction list.
    let mut rooted = good.clone();
    rooted.header.merkle_root = [9; 32];
    net.resign(&mut rooted, p1);
    assert_refused(&node, rooted, &BlockError::MerkleRoot);
    let mut emptied = good.clone();
    emptied.transactions.clear();
    assert_refused(&node, emptied, &BlockError::MerkleRoot);
    // Timestamps: slot 0 (the genesis' slot), before the genesis, in the
    // future.
    let p0 = net.producer_of(0);
    // (Height 1 in slot 0 is caught by the header check: a block's height
    // can never exceed its slot.)
    let slot_not_after = BlockError::Timestamp("height beyond what its slot allows");
    assert_refused(
        &node,
        net.block(p0, parent, g.timestamp, vec![]),
        &slot_not_after,
    );
    assert_refused(
        &node,
        net.block(p0, parent, g.timestamp - 3 * INTERVAL, vec![]),
        &BlockError::Timestamp("before the genesis"),
    );
    let future = now_secs() + MAX_BLOCK_FUTURE_DRIFT_SECS + 2 * INTERVAL;
    let pf = net.producer_of(g.slot(future));
    assert_refused(
        &node,
        net.block(pf, parent, future, vec![]),
        &BlockError::Timestamp("in the future"),
    );
    // A transaction with a bad signature (the txid, hence the merkle root,
    // does not cover signatures).
    let mut bad_tx = tx.clone();
    bad_tx.inputs[0].signature[0] ^= 0x80;
    let result = node.handle_block(net.block(p1, parent, t1, vec![bad_tx]), "gossip");
    assert!(matches!(
        block_error(result),
        BlockError::Transaction {
            index: 0,
            error: TxError::Signature { index: 0, .. }
        }
    ),);
    // Double spends inside the block: the same transaction twice, two
    // spends of one output.
    assert_refused(
        &node,
        net.block(p1, parent, t1, vec![tx.clone(), tx.clone()]),
        &BlockError::DoubleSpend { index: 1 },
    );
    let spendable = node.spendable(&net.wallets[0].address()).unwrap();
    let rival = net.wallets[0]
        .build_payment(magic, &spendable, address(), 2 * COIN, MIN_FEE)
        .unwrap();
    assert_eq!(rival.inputs[0].prevout, tx.inputs[0].prevout);
    assert_refused(
        &node,
        net.block(p1, parent, t1, vec![tx.clone(), rival]),
        &BlockError::DoubleSpend { index: 1 },
    );
    // Spending an output that does not exist.
    let mut ghost = tx.clone();
    ghost.inputs[0].prevout.index = 99;
    ghost.sign(magic, &[net.wallets[0].secret_key()]);
    assert_refused(
        &node,
        net.block(p1, parent, t1, vec![ghost]),
        &BlockError::Transaction {
            index: 0,
            error: TxError::MissingInput { index: 0 },
        },
    );

    // After all that, the good block applies.
    assert_eq!(
        node.handle_block(good.clone(), "gossip").unwrap(),
        BlockOutcome::Applied
    );
    // On top of it: a block in the same slot, and a repeat of its
    // transaction.
    let parent2 = (good.hash(), 1);
    assert_refused(
        &node,
        net.block(p1, parent2, t1 + 1, vec![]),
        &slot_not_after,
    );
    let s2 = net.slot_of(p1, 1);
    assert_refused(
        &node,
        net.block(p1, parent2, g.slot_start(s2), vec![tx]),
        &BlockError::DoubleSpend { index: 0 },
    );
}

#[test]
fn a_block_may_spend_outputs_created_earlier_in_it() {
    let mut net = Net::new(1, 1);
    let node = net.observer(ChainOptions::default());
    let wallet = &net.wallets[0];
    let magic = node.magic();
    let first = pay(&node, wallet, address(), COIN, MIN_FEE);
    let change = OutPoint {
        txid: first.txid(),
        index: 1,
    };
    let then = wallet
        .build_payment(
            magic,
            &[(change, first.outputs[1])],
            address(),
            COIN,
            MIN_FEE,
        )
        .unwrap();
    let parent = (net.genesis.hash(), 0);
    let t = net.genesis.slot_start(1);
    // Out of order: the second spends what does not exist yet.
    assert_refused(
        &node,
        net.block(0, parent, t, vec![then.clone(), first.clone()]),
        &BlockError::Transaction {
            index: 0,
            error: TxError::MissingInput { index: 0 },
        },
    );
    let block = net.block(0, parent, t, vec![first, then]);
    assert_eq!(
        node.handle_block(block, "gossip").unwrap(),
        BlockOutcome::Applied
    );
    assert_eq!(
        node.store().balance(&wallet.address()).unwrap(),
        FUNDS - 2 * COIN - 2 * MIN_FEE
    );
}

#[test]
fn oversized_blocks_are_refused() {
    let bytes = vec![0u8; MAX_BLOCK_BYTES + 1];
    assert_eq!(
        Chain::decode_block(&bytes).unwrap_err(),
        BlockError::TooLarge(MAX_BLOCK_BYTES + 1)
    );
    assert!(matches!(
        Chain::decode_block(&[1, 2, 3]),
        Err(BlockError::Encoding(_))
    ));
    // A decoded (or locally built) block over the limit.
    let mut net = Net::new(1, 0);
    let node = net.observer(ChainOptions::default());
    let filler = |nonce| Transaction {
        version: 1,
        inputs: Vec::new(),
        outputs: vec![
            TxOut {
                value: 1,
                address: Address([5; 20]),
            };
            crate::chain::transaction::MAX_OUTPUTS
        ],
        nonce,
    };
    let per_tx = filler(0).size();
    let txs: Vec<Transaction> = (0..(MAX_BLOCK_BYTES / per_tx + 1) as u64)
        .map(filler)
        .collect();
    let block = net.block(0, (net.genesis.hash(), 0), net.genesis.slot_start(1), txs);
    let result = node.handle_block(block, "gossip");
    assert!(matches!(block_error(result), BlockError::TooLarge(n) if n > MAX_BLOCK_BYTES));
    assert_eq!(node.tip().height, 0);
}

#[test]
fn a_block_ahead_of_the_tip_is_left_to_sync() {
    let mut net = Net::new(2, 0);
    let node = net.observer(ChainOptions::default());
    let before = snapshot(&node);
    let g = &net.genesis;
    let s = net.slot_of(0, 3);
    let ahead = net.block(0, ([3; 32], 1), g.slot_start(s), vec![]);
    assert_eq!(
        node.handle_block(ahead, "gossip").unwrap(),
        BlockOutcome::Ahead
    );
    assert_eq!(snapshot(&node), before);
    assert_eq!(node.best_seen(), 2);
    // At tip + 1 but not linking: maybe a competitor's child (height ≥ 2).
    let b1 = net.produce(net.producer_of(1), 1);
    node.handle_block(b1, "gossip").unwrap();
    let before = snapshot(&node);
    let orphan = net.block(0, ([4; 32], 1), g.slot_start(s), vec![]);
    assert_eq!(
        node.handle_block(orphan, "gossip").unwrap(),
        BlockOutcome::Ahead
    );
    assert_eq!(snapshot(&node), before);
}

// ----- competing blocks -----------------------------------------------------

#[test]
fn the_earlier_slot_wins_between_competing_blocks() {
    let mut net = Net::new(3, 2);
    let observer = net.observer(ChainOptions::default());
    let late_first = net.observer(ChainOptions::default());
    let early_first = net.observer(ChainOptions::default());
    let (early, late) = (1, 2);
    let (e, l) = (net.producer_of(early), net.producer_of(late));
    let third = (0..3).find(|i| *i != e && *i != l).unwrap();
    let to = address();
    // The losing (later) block holds a final transaction.
    let lc = &net.chains[l];
    let lost_tx = pay(lc, &net.wallets[0], to, 4 * COIN, MIN_FEE);
    lc.submit_tx(lost_tx.clone()).unwrap();
    lc.handle_vote(net.key(third), accept(lost_tx.txid()))
        .unwrap();
    let loser = net.produce(l, late);
    assert_eq!(loser.transactions, vec![lost_tx.clone()]);
    // The winner holds another one.
    let ec = &net.chains[e];
    let won_tx = pay(ec, &net.wallets[1], to, COIN, MIN_FEE);
    ec.submit_tx(won_tx.clone()).unwrap();
    ec.handle_vote(net.key(third), accept(won_tx.txid()))
        .unwrap();
    let winner = net.produce(e, early);
    assert_eq!(winner.transactions, vec![won_tx.clone()]);
    assert_eq!(winner.header.height, loser.header.height);

    for chain in [&late_first, &net.chains[l]] {
        if chain.tip().hash != loser.hash() {
            assert_eq!(
                chain.handle_block(loser.clone(), "gossip").unwrap(),
                BlockOutcome::Applied
            );
        }
        assert_eq!(chain.store().balance(&to).unwrap(), 4 * COIN);
        assert_eq!(
            chain.handle_block(winner.clone(), "gossip").unwrap(),
            BlockOutcome::ReplacedTip
        );
        assert_eq!(chain.tip().hash, winner.hash());
        assert_eq!(chain.tip().height, 1);
        assert_eq!(chain.store().tip().unwrap(), Some((1, winner.hash())));
        assert_eq!(chain.store().height_of(&loser.hash()).unwrap(), None);
        // The loser's transaction is back in the pool, still valid.
        assert_eq!(
            chain.transaction(&lost_tx.txid()).unwrap(),
            Some(TxStatus::Pooled(lost_tx.clone()))
        );
        assert_eq!(
            chain.transaction(&won_tx.txid()).unwrap(),
            Some(TxStatus::InBlock(1, won_tx.clone()))
        );
        assert_eq!(chain.store().balance(&to).unwrap(), COIN);
        assert_eq!(
            chain.store().balance(&net.wallets[0].address()).unwrap(),
            FUNDS
        );
        // Known now.
        assert_eq!(
            chain.handle_block(winner.clone(), "gossip").unwrap(),
            BlockOutcome::Known
        );
    }

    // The loser after the winner: stale.
    for chain in [&early_first, &observer] {
        chain.handle_block(winner.clone(), "gossip").unwrap();
        let before = snapshot(chain);
        let err = chain.handle_block(loser.clone(), "gossip").unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::Block(BlockError::Stale { height: 1, tip: 1 })
            ),
            "{err:?}"
        );
        assert_eq!(err.fault(), None, "losing a race is no offence");
        assert_eq!(snapshot(chain), before);
    }
    // On the winner's own producer too.
    let err = net.chains[e]
        .handle_block(loser.clone(), "gossip")
        .unwrap_err();
    assert!(matches!(err, ChainError::Block(BlockError::Stale { .. })));
    // Below the tip: stale as well.
    let next = net.slot_of(e, late);
    let child = net.block(e, (winner.hash(), 1), net.genesis.slot_start(next), vec![]);
    observer.handle_block(child, "gossip").unwrap();
    let err = observer.handle_block(loser, "gossip").unwrap_err();
    assert!(matches!(
        err,
        ChainError::Block(BlockError::Stale { height: 1, tip: 2 })
    ));
}

/// A transaction of an abandoned block was final; it must become part of
/// the chain again.
#[test]
fn a_transaction_of_a_replaced_block_gets_into_a_later_block() {
    let net = Net::new(3, 1);
    let (early, late) = (1, 2);
    let (e, l) = (net.producer_of(early), net.producer_of(late));
    let third = (0..3).find(|i| *i != e && *i != l).unwrap();
    let lc = &net.chains[l];
    let tx = pay(lc, &net.wallets[0], address(), COIN, MIN_FEE);
    for i in [l, third] {
        net.chains[i].submit_tx(tx.clone()).unwrap();
    }
    lc.handle_vote(net.key(third), accept(tx.txid())).unwrap();
    net.chains[third]
        .handle_vote(net.key(l), accept(tx.txid()))
        .unwrap();
    let loser = net.produce(l, late);
    let winner = net.produce(e, early);
    for i in [l, third] {
        let chain = &net.chains[i];
        if chain.tip().hash != loser.hash() {
            chain.handle_block(loser.clone(), "gossip").unwrap();
        }
        assert_eq!(
            chain.handle_block(winner.clone(), "gossip").unwrap(),
            BlockOutcome::ReplacedTip
        );
        assert!(chain.mempool_txids().contains(&tx.txid()));
        assert!(
            durable_tally(chain, &tx.txid()).finalized,
            "final before the reorg"
        );
    }
    // Each masternode voted again on the returned transaction (gossip
    // carries the votes; here they are handed over).
    lc.handle_vote(net.key(third), accept(tx.txid())).unwrap();
    net.chains[third]
        .handle_vote(net.key(l), accept(tx.txid()))
        .unwrap();
    // Whoever produces next includes it.
    let mut slot = late;
    loop {
        slot += 1;
        let p = net.producer_of(slot);
        if p == e {
            continue;
        }
        let block = net.produce(p, slot);
        assert_eq!(block.transactions, vec![tx]);
        break;
    }
}

#[test]
fn in_the_same_slot_the_lower_hash_wins() {
    let mut net = Net::new(2, 0);
    let p = net.producer_of(1);
    let t = net.genesis.slot_start(1);
    let parent = (net.genesis.hash(), 0);
    let mut pair = [
        net.block(p, parent, t, vec![]),
        net.block(p, parent, t + 1, vec![]),
    ];
    pair.sort_by_key(Block::hash);
    let [low, high] = pair;
    let x = net.observer(ChainOptions::default());
    x.handle_block(high.clone(), "gossip").unwrap();
    assert_eq!(
        x.handle_block(low.clone(), "gossip").unwrap(),
        BlockOutcome::ReplacedTip
    );
    assert_eq!(x.tip().hash, low.hash());
    let y = net.observer(ChainOptions::default());
    y.handle_block(low.clone(), "gossip").unwrap();
    assert!(matches!(
        y.handle_block(high, "gossip"),
        Err(ChainError::Block(BlockError::Stale { .. }))
    ));
    assert_eq!(y.tip().hash, low.hash());
}

#[test]
fn an_invalid_competitor_leaves_the_tip_in_place() {
    let mut net = Net::new(3, 1);
    let node = net.observer(ChainOptions::default());
    let loser = net.produce(net.producer_of(2), 2);
    node.handle_block(loser.clone(), "gossip").unwrap();
    let before = snapshot(&node);
    // An earlier slot, but badly signed.
    let e = net.producer_of(1);
    let mut winner = net.block(
        e,
        (net.genesis.hash(), 0),
        net.genesis.slot_start(1),
        vec![],
    );
    winner.header.signature[0] ^= 1;
    let err = node.handle_block(winner, "gossip").unwrap_err();
    assert!(
        matches!(err, ChainError::Block(BlockError::Signature)),
        "{err:?}"
    );
    assert_eq!(snapshot(&node), before);
    assert_eq!(node.tip().hash, loser.hash());
    // An earlier slot by the wrong producer.
    let wrong = net.block(
        net.producer_of(2),
        (net.genesis.hash(), 0),
        net.genesis.slot_start(1),
        vec![],
    );
    assert!(matches!(
        node.handle_block(wrong, "gossip"),
        Err(ChainError::Block(BlockError::WrongProducer { slot: 1 }))
    ));
    assert_eq!(snapshot(&node), before);
}

#[test]
fn a_longer_branch_replaces_the_chain() {
    let mut net = Net::new(3, 0);
    let node = net.observer(ChainOptions::default());
    let ours = net.produce(net.producer_of(2), 2);
    node.handle_block(ours.clone(), "gossip").unwrap();
    // A branch of two blocks, the first in a later slot than ours.
    let b1 = net.block(
        net.producer_of(4),
        (net.genesis.hash(), 0),
        net.genesis.slot_start(4),
        vec![],
    );
    let b2 = net.block(
        net.producer_of(5),
        (b1.hash(), 1),
        net.genesis.slot_start(5),
        vec![],
    );
    // A longer branch with an invalid block: our chain stays.
    let mut bad = b2.clone();
    bad.header.signature[3] ^= 1;
    let before = snapshot(&node);
    assert!(node.reorg(vec![b1.clone(), bad], "sync").is_err());
    assert_eq!(snapshot(&node), before);
    assert_eq!(node.hash_at(1).unwrap(), Some(ours.hash()));
    // The valid one wins although its first block is in a later slot.
    assert_eq!(
        node.reorg(vec![b1.clone(), b2.clone()], "sync").unwrap(),
        BlockOutcome::ReplacedTip
    );
    assert_eq!(node.tip().height, 2);
    assert_eq!(node.tip().hash, b2.hash());
    assert_eq!(node.hash_at(1).unwrap(), Some(b1.hash()));
}
