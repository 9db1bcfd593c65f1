"""Leader election settings that could let two replicas act at once are refused at start."""

from __future__ import annotations

import pytest
from kubernetes import client

from tandem.controller.kube import TIMEOUT
from tandem.controller.leader import Leadership


def _api() -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:1"
    return client.ApiClient(configuration)


def test_a_renew_deadline_that_leaves_no_room_for_the_last_write_is_refused() -> None:
    with pytest.raises(ValueError, match="lease duration"):
        Leadership("lease", "ns", "me", lease_duration=15, renew_deadline=15 - sum(TIMEOUT), api=_api())


def test_the_defaults_leave_room_for_the_longest_write() -> None:
    leadership = Leadership("lease", "ns", "me", api=_api())
    assert leadership.renew_deadline + sum(TIMEOUT) < 20


def test_a_replica_that_never_acquired_the_lease_is_not_leading() -> None:
    assert not Leadership("lease", "ns", "me", api=_api()).leading()
