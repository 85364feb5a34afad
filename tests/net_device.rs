//! The network card from the guest's side, on real KVM: the small guest `virtio_net`
//! (tests/guests/virtio_net.c) is its own virtio driver, with passt on the other end
//! (`--net user`, no root). It brings the card up and exchanges ARP with passt, and it breaks
//! the card on purpose (a transmit buffer beyond RAM, a chain that loops, read-only receive
//! buffers, a descriptor table beyond RAM): each time the card must report DEVICE_NEEDS_RESET
//! with a configuration interrupt, uhyve must go on (one warning), and after a reset the card
//! must work again. It also checks interrupt suppression, with the no-interrupt flag and with
//! event indexes.
//!
//! Needs KVM and passt: without them the tests are skipped with a message; under
//! `UHYVE_REQUIRE_KVM` (CI) they fail instead.
#![cfg(kvm)]

mod common;

use std::time::Duration;

use common::network::passt_or_skip;
use common::{Uhyve, kvm_or_skip};

/// Runs the driver guest in `mode` with `--net user` and `options`; checks that it passed every
/// check of its own.
fn run_driver(mode: &str, options: &[&str]) -> common::Run {
    let run = Uhyve::guest("virtio_net")
        .opts(["--net", "user"].iter().chain(options))
        .args([mode])
        .timeout(Duration::from_secs(120))
        .run();
    let report = run.report();
    assert!(
        run.stdout.contains("virtio_net: all checks passed"),
        "{report}"
    );
    assert!(!run.stdout.contains("FAILED"), "{report}");
    run.assert_success();
    run
}

/// Runs the driver guest in `mode`; checks that every check passed, and whether uhyve warned
/// that the guest broke the card.
fn drive(mode: &str, breaks_the_card: bool) {
    let test = format!("virtio_net {mode}");
    if !kvm_or_skip(&test) || !passt_or_skip(&test) {
        return;
    }
    let run = run_driver(mode, &[]);
    let report = run.report();
    assert_eq!(
        run.stderr.contains("network card broken by the guest"),
        breaks_the_card,
        "{report}"
    );
    assert!(!run.stderr.contains("panicked"), "{report}");
    // One line per breakage at most, and nothing from the queue crate's own logging.
    assert!(run.stderr.lines().count() <= 1, "{report}");
}

#[test]
fn a_driver_brings_the_card_up_and_exchanges_arp_with_passt() {
    drive("arp", false);
}

#[test]
fn a_transmit_buffer_beyond_ram_breaks_the_card_until_reset() {
    drive("tx-outside-ram", true);
}

#[test]
fn a_looping_transmit_chain_breaks_the_card_until_reset() {
    drive("tx-loop", true);
}

#[test]
fn read_only_receive_buffers_break_the_card_and_stay_untouched() {
    drive("rx-read-only", true);
}

#[test]
fn queue_notifications_make_no_exit_to_uhyve() {
    let test = "queue_notifications_make_no_exit_to_uhyve";
    if !kvm_or_skip(test) || !passt_or_skip(test) {
        return;
    }
    let run = run_driver("notify-100", &["--stats"]);
    let report = run.report();
    // KVM_IOEVENTFD: the 100 notifications reach the I/O thread without an exit; what remains
    // is the driver's set-up (about 30 register writes).
    let mmio_writes: u64 = run
        .stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("mmio write:"))
        .and_then(|cells| cells.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no mmio write row\n{report}"));
    assert!(mmio_writes < 60, "{mmio_writes} MMIO write exits\n{report}");
    assert!(run.stdout.contains("guest to host: 100 frames"), "{report}");
}

#[test]
fn the_no_interrupt_flag_suppresses_the_queue_interrupt() {
    drive("suppress-flag", false);
}

#[test]
fn event_indexes_suppress_and_request_notifications() {
    drive("event-idx", false);
}

#[test]
fn a_descriptor_table_beyond_ram_is_refused_at_driver_ok() {
    drive("ring-outside-ram", true);
}
