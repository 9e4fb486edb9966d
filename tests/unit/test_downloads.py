"""copies.Downloads: the claims by which folders synced at once (--jobs) download a
Gmail message once: a message claimed by one copier is left by the others until the
claim is released, and nobody waits while holding a claim."""

from __future__ import annotations

import threading

from mailsync.copies import Downloads


def test_a_claim_held_by_another_copier_is_reported_and_one_of_its_own_is_not():
    downloads = Downloads()
    first, second = object(), object()
    assert downloads.claim(first, {"1", "2"}) == set()
    assert downloads.claim(second, {"2", "3"}) == {"2"}
    assert downloads.claim(first, {"1"}) == set()  # (its own again)
    downloads.release(first, {"1"})
    assert downloads.claim(second, {"1"}) == set()


def test_a_waiting_copier_goes_on_as_soon_as_some_of_its_messages_are_released():
    downloads = Downloads()
    owner, waiter = object(), object()
    downloads.claim(owner, {"1", "2"})
    got: list[set] = []
    thread = threading.Thread(target=lambda: got.append(downloads.wait_for_any({"1", "2"})))
    thread.start()
    downloads.release(waiter, None)  # another copier's release: nothing of these
    downloads.release(owner, {"2"})
    thread.join(30)
    assert not thread.is_alive() and got == [{"2"}]
    downloads.release(owner, None)
    assert downloads.wait_for_any({"1", "2"}) == {"1", "2"}
