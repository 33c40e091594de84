"""The one vocabulary: every module uses the same declarations."""

from crowdflow import records, vocab
from crowdflow.site import CHECKS


def test_command_kinds_roles_and_fields_are_one_table():
    assert set(vocab.COMMAND_ROLE) == set(vocab.COMMAND_KINDS) == set(vocab.COMMAND_FIELDS)
    assert all(r in vocab.ROLES for r in vocab.COMMAND_ROLE.values())
    # the record's field set covers every required field of every kind
    for fields in vocab.COMMAND_FIELDS.values():
        assert set(fields) <= set(records.Command.model_fields)


def test_role_order():
    assert vocab.role_allows("commander", "operator") and vocab.role_allows("operator", "viewer")
    assert not vocab.role_allows("viewer", "operator") and not vocab.role_allows("intruder", "viewer")
    assert [vocab.level_rank(x) for x in (None, "IV", "I")] == [-1, 0, 3]


def test_site_checks_are_named():
    assert all(c.__name__.startswith("verify_") for c in CHECKS)


def test_site_helper_freed_area(site):
    road = next(r for r in site.roads if r.frees)
    extra = site.freed_area([road.id, road.id, "no-such-road"])
    assert abs(sum(extra.values()) - road.pedestrian_area_m2 * sum(road.frees.values())) < 1e-6
    caps = site.capacities([road.id])
    base = site.capacities()
    assert all(caps[z] >= base[z] for z in base) and any(caps[z] > base[z] for z in road.frees)
