"""Publishing signals to receivers that may fail."""

from __future__ import annotations

from blinker import Signal

from reactor.signals import connect, publish


def test_failing_receiver_does_not_stop_others() -> None:
    signal = Signal("test")
    calls: list[str] = []

    def broken(_sender: object, **_payload: object) -> None:
        calls.append("broken")
        raise RuntimeError("boom")

    def healthy(_sender: object, **payload: object) -> None:
        calls.append(f"healthy:{payload['value']}")

    connect(signal, broken)
    connect(signal, healthy)
    assert publish(signal, object(), value=7) == 1
    assert calls == ["broken", "healthy:7"]


def test_receivers_are_kept_alive() -> None:
    signal = Signal("test")
    calls: list[int] = []

    def subscribe() -> None:
        def local(_sender: object, **_payload: object) -> None:
            calls.append(1)

        connect(signal, local)

    subscribe()
    publish(signal, object())
    assert calls == [1]
