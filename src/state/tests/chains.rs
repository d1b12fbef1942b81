//! Unit tests of chained pooled transactions: a payment spending the output
//! of one not yet in a block; finality waits for the parent, blocks list
//! parents first, conflicts take descendants along, and the pool with its
//! finality survives a reopen.
use super::*;

/// A payment by `wallet` of `amount` to `to` from output `index` of the
/// pooled (or confirmed) transaction `parent`.
fn spend(
    chain: &Chain,
    wallet: &Wallet,
    parent: &Transaction,
    index: u32,
    to: Address,
    amount: u64,
) -> Transaction {
    let outpoint = OutPoint {
        txid: parent.txid(),
        index,
    };
    let output = parent.outputs[index as usize];
    wallet
        .build_payment(chain.magic(), &[(outpoint, output)], to, amount, MIN_FEE)
        .unwrap()
}

#[test]
fn a_child_is_final_only_once_its_parent_is() {
    let net = Net::new(3, 1);
    let chain = &net.chains[0];
    let wallet = &net.wallets[0];
    let parent = pay(chain, wallet, address(), COIN, MIN_FEE);
    chain.submit_tx(parent.clone()).unwrap();
    // The child spends the parent's change, before any block.
    let child = spend(chain, wallet, &parent, 1, address(), COIN);
    let (child_id, _) = chain.submit_tx(child.clone()).unwrap();
    // 2 of 3 accept the child: final by votes, but its parent is not final.
    chain.handle_vote(net.key(1), accept(child_id)).unwrap();
    assert_eq!(tally(chain, &child_id), (2, 0, 2, false));
    // The parent reaches 2/3: both are final now.
    chain
        .handle_vote(net.key(1), accept(parent.txid()))
        .unwrap();
    assert!(tally(chain, &parent.txid()).3);
    assert!(tally(chain, &child_id).3, "final once its parent is");
    // The wallet may spend the child's change at once.
    let spendable = chain.spendable(&wallet.address()).unwrap();
    assert!(spendable.iter().any(|(o, _)| *o
        == OutPoint {
            txid: child_id,
            index: 1
        }));
}

#[test]
fn blocks_list_parents_first_and_peers_accept_them() {
    let mut net = Net::new(1, 1);
    let chain = &net.chains[0];
    let wallet = &net.wallets[0];
    // A chain of three, each final at once (one masternode).
    let a = pay(chain, wallet, address(), COIN, MIN_FEE);
    chain.submit_tx(a.clone()).unwrap();
    let b = spend(chain, wallet, &a, 1, address(), COIN);
    chain.submit_tx(b.clone()).unwrap();
    let c = spend(chain, wallet, &b, 1, address(), COIN);
    chain.submit_tx(c.clone()).unwrap();
    let block = net.produce(0, 1);
    let order: Vec<Txid> = block.transactions.iter().map(Transaction::txid).collect();
    assert_eq!(order, vec![a.txid(), b.txid(), c.txid()]);
    assert!(net.chains[0].mempool_txids().is_empty());
    let observer = net.observer(ChainOptions::default());
    assert_eq!(
        observer.handle_block(block, "gossip").unwrap(),
        BlockOutcome::Applied
    );
    assert!(observer.store().tx_height(&c.txid()).unwrap().is_some());
}

#[test]
fn a_conflicting_block_removes_the_pooled_chain_below_it() {
    let net = Net::new(2, 1);
    let chain = &net.chains[0];
    let wallet = &net.wallets[0];
    let spendable = chain.spendable(&wallet.address()).unwrap();
    let parent = wallet
        .build_payment(chain.magic(), &spendable[..1], address(), COIN, MIN_FEE)
        .unwrap();
    chain.submit_tx(parent.clone()).unwrap();
    let child = spend(chain, wallet, &parent, 1, address(), COIN);
    chain.submit_tx(child.clone()).unwrap();
    // A block that spends the parent's input otherwise.
    let rival = wallet
        .build_payment(chain.magic(), &spendable[..1], address(), 2 * COIN, MIN_FEE)
        .unwrap();
    let producer = net.producer_of(1);
    let block = net.block(
        producer,
        (net.genesis.block().hash(), 0),
        net.genesis.slot_start(1),
        vec![rival.clone()],
    );
    assert_eq!(
        chain.handle_block(block, "gossip").unwrap(),
        BlockOutcome::Applied
    );
    assert!(
        chain.mempool_txids().is_empty(),
        "parent and child are gone"
    );
    assert_eq!(chain.transaction(&child.txid()).unwrap(), None);
}

#[test]
fn the_pool_and_its_finality_survive_a_reopen() {
    let mut net = Net::new(1, 1);
    let (parent, child) = {
        let chain = &net.chains[0];
        let wallet = &net.wallets[0];
        let parent = pay(chain, wallet, address(), COIN, MIN_FEE);
        chain.submit_tx(parent.clone()).unwrap();
        let child = spend(chain, wallet, &parent, 1, address(), COIN);
        chain.submit_tx(child.clone()).unwrap();
        assert!(tally(chain, &child.txid()).3);
        (parent, child)
    };
    // Closed without a flush: the journal's writer commits on drop.
    drop(net.chains.remove(0));
    let reopened = Chain::open(
        net.dirs[0].path(),
        net.genesis.clone(),
        &net.ids[0],
        ChainOptions::default(),
    )
    .unwrap();
    let mut pooled = reopened.mempool_txids();
    pooled.sort();
    let mut expected = vec![parent.txid(), child.txid()];
    expected.sort();
    assert_eq!(pooled, expected);
    assert!(tally(&reopened, &parent.txid()).3);
    assert!(tally(&reopened, &child.txid()).3, "still final");
    // And it lands in a block.
    let block = reopened
        .produce_if_scheduled(net.genesis.slot_start(1))
        .unwrap()
        .unwrap();
    assert_eq!(block.transactions.len(), 2);
}
