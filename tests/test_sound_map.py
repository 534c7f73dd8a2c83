"""The sound map of the zero-shot semantic localizer (``avloc/methods/avsemantic/sound_map.json``) and its loader."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from avloc.errors import ConfigError
from avloc.methods.avsemantic.mapping import (
    DEFAULT_CLASS_MAP,
    DEFAULT_IMAGENET_NAMES,
    DEFAULT_SOUND_MAP,
    SoundMap,
    load_sound_map,
    read_imagenet_names,
)

LEGACY = Path(__file__).resolve().parents[1] / "src" / "avloc" / "methods" / "avsemantic" / "audioset_to_imagenet.json"

#: indices every copy of the ImageNet-1k class list agrees on
KNOWN_IMAGENET = {0: "tench", 1: "goldfish", 7: "cock", 151: "Chihuahua", 207: "golden retriever", 281: "tabby",
                  402: "acoustic guitar", 407: "ambulance", 491: "chain saw", 541: "drum", 579: "grand piano",
                  817: "sports car", 881: "upright", 889: "violin", 999: "toilet tissue"}


@pytest.fixture(scope="module")
def smap() -> SoundMap:
    return load_sound_map()


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return json.loads(DEFAULT_SOUND_MAP.read_text())


def yamnet_names() -> list[str]:
    with open(DEFAULT_CLASS_MAP, newline="") as f:
        return [row["display_name"] for row in csv.DictReader(f)]


def test_imagenet_names_standard_order() -> None:
    names = read_imagenet_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    for i, name in KNOWN_IMAGENET.items():
        assert names[i] == name, (i, names[i])
    assert DEFAULT_IMAGENET_NAMES.read_text().startswith("#")  # the source is cited in the header


def test_every_yamnet_class_covered_once(smap: SoundMap, doc: dict[str, Any]) -> None:
    names = yamnet_names()
    assert len(names) == 521
    listed = [e["audioset"] for e in doc["classes"]]
    assert sorted(listed) == sorted(names)  # each exactly once, nothing else
    assert smap.audioset_names == names  # YAMNet order
    assert smap.kind.shape == (521,) and smap.offscreen_prior.dtype == bool


def test_counts(smap: SoundMap) -> None:
    c = smap.counts()
    assert sum(c.values()) == 521
    assert c["object"] >= 200 and c["human"] >= 50 and c["none"] >= 150
    assert int(smap.is_object.sum() + smap.is_human.sum() + smap.is_none.sum()) == 521


@pytest.mark.parametrize(("name", "imagenet"), [
    ("Dog", {207: "golden retriever", 151: "Chihuahua"}), ("Bark", {207: "golden retriever"}),
    ("Cat", {281: "tabby"}), ("Piano", {579: "grand piano", 881: "upright"}), ("Acoustic guitar", {402: "acoustic guitar"}),
    ("Electric guitar", {546: "electric guitar"}), ("Violin, fiddle", {889: "violin"}), ("Cello", {486: "cello"}),
    ("Drum", {541: "drum"}), ("Ambulance (siren)", {407: "ambulance"}), ("Car", {817: "sports car"}),
    ("Chainsaw", {491: "chain saw"}), ("Hammer", {587: "hammer"}), ("Drill", {740: "power drill"}),
    ("Chicken, rooster", {7: "cock", 8: "hen"}), ("Owl", {24: "great grey owl"}), ("Bee, wasp, etc.", {309: "bee"}),
    ("Cricket", {312: "cricket"}), ("Hair dryer", {589: "hand blower"}), ("Vacuum cleaner", {882: "vacuum"}),
    ("Toilet flush", {861: "toilet seat"}), ("Sewing machine", {786: "sewing machine"}),
    ("Mechanical fan", {545: "electric fan"}), ("Motorcycle", {665: "moped"}), ("Church bell", {442: "bell cote"}),
])
def test_spot_checks_object(smap: SoundMap, name: str, imagenet: dict[int, str]) -> None:
    i = smap.index(name)
    assert smap.kind_names[i] == "object"
    for j, label in imagenet.items():
        assert j in smap.imagenet[i], (name, j)
        assert smap.imagenet_names[j] == label


def test_spot_checks_ranges(smap: SoundMap) -> None:
    assert smap.imagenet[smap.index("Dog")] == tuple(range(151, 269))  # the 118 dog breeds, nothing else
    assert smap.imagenet[smap.index("Cat")] == tuple(range(281, 286))
    assert smap.imagenet[smap.index("Piano")] == (579, 881)
    # look-alike ImageNet names that must not be used
    used = {j for idx in smap.imagenet for j in idx}
    for j, name in {673: "mouse", 669: "mosquito net", 458: "brass", 738: "pot", 553: "file"}.items():
        assert smap.imagenet_names[j] == name
    assert 673 not in used and 669 not in used and 458 not in used and 738 not in used
    assert smap.imagenet[smap.index("Filing (rasp)")] == ()


@pytest.mark.parametrize(("name", "region"), [
    ("Speech", "face"), ("Singing", "face"), ("Laughter", "face"), ("Baby cry, infant cry", "face"), ("Cough", "face"),
    ("Rapping", "face"), ("Whistling", "face"), ("Clapping", "body"), ("Walk, footsteps", "body"),
    ("Finger snapping", "body"),
])
def test_spot_checks_human(smap: SoundMap, name: str, region: str) -> None:
    i = smap.index(name)
    assert smap.kind_names[i] == "human" and smap.region[i] == region


@pytest.mark.parametrize("name", ["Music", "Rain", "Wind", "Thunder", "Silence", "Noise", "Static", "Echo",
                                  "Inside, small room", "Sound effect", "Rock music", "Helicopter", "Fire", "Mosquito"])
def test_spot_checks_none(smap: SoundMap, name: str) -> None:
    i = smap.index(name)
    assert smap.kind_names[i] == "none" and smap.imagenet[i] == () and smap.region[i] is None
    assert smap.why[i]


def test_offscreen_prior(smap: SoundMap) -> None:
    for name in ("Narration, monologue", "Speech synthesizer"):
        i = smap.index(name)
        assert smap.kind_names[i] == "human" and smap.offscreen_prior[i]
    assert not smap.offscreen_prior[smap.index("Speech")]


def test_region_only_for_humans(smap: SoundMap) -> None:
    for i, k in enumerate(smap.kind_names):
        assert (smap.region[i] is not None) == (k == "human")


def test_labels_name_their_classes(doc: dict[str, Any]) -> None:
    names = read_imagenet_names()
    for e in doc["classes"]:
        for first, last, label in e.get("imagenet", []):
            assert names[first] in label and names[last] in label, (e["audioset"], first, last, label)


def test_object_matrix(smap: SoundMap) -> None:
    m = smap.object_matrix()
    assert m.shape == (521, 1000) and m.dtype == np.float32
    rows = m.sum(axis=1)
    has_imagenet = np.array([bool(i) for i in smap.imagenet])
    np.testing.assert_allclose(rows[has_imagenet], 1.0, rtol=1e-6)
    assert np.all(rows[~has_imagenet] == 0) and np.all(has_imagenet <= smap.is_object)
    i = smap.index("Piano")
    assert m[i, 579] == pytest.approx(0.5) and m[i, 881] == pytest.approx(0.5)
    scores = np.zeros(521, np.float32)
    scores[smap.index("Dog")] = 0.9
    scores[smap.index("Speech")] = 0.8  # human: contributes nothing to ImageNet weights
    w = scores @ m  # (1000,)
    assert w.sum() == pytest.approx(0.9) and w[207] == pytest.approx(0.9 / 118)


def test_read_only(smap: SoundMap) -> None:
    with pytest.raises(ValueError):
        smap.kind[0] = 2
    with pytest.raises(AttributeError):
        smap.kind = np.zeros(521)  # type: ignore[misc]


def test_legacy_groups_reproduced(smap: SoundMap) -> None:
    legacy = SoundMap.from_legacy_groups(LEGACY)
    groups = json.loads(LEGACY.read_text())["groups"]
    expect: dict[str, set[int]] = {}
    for g in groups:
        idx = {i for first, last, _ in g["imagenet"] for i in range(first, last + 1)}
        for name in g["audioset"]:
            expect.setdefault(name, set()).update(idx)
    assert len(groups) == 42
    for i, name in enumerate(legacy.audioset_names):
        if name in expect:
            assert legacy.kind_names[i] == "object" and set(legacy.imagenet[i]) == expect[name], name
        elif smap.kind_names[i] == "object":
            assert legacy.kind_names[i] == "none" and legacy.imagenet[i] == ()
        else:  # human and none entries of the new map are kept
            assert legacy.kind_names[i] == smap.kind_names[i] and legacy.region[i] == smap.region[i]
    assert int(legacy.is_object.sum()) == len(expect)
    assert legacy.kind_names[legacy.index("Speech")] == "human"
    np.testing.assert_allclose(legacy.object_matrix().sum(axis=1)[legacy.is_object], 1.0, rtol=1e-6)


# ---- validation: a bad file fails with a ConfigError that names the entry


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    p = tmp_path / "bad_map.json"
    p.write_text(json.dumps(doc))
    return p


def _entry(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in doc["classes"] if e["audioset"] == name)


def _bad_unknown_name(d: dict[str, Any]) -> None:
    d["classes"].append({"audioset": "Kazoo", "kind": "none", "why": "x"})


def _bad_index(d: dict[str, Any]) -> None:
    _entry(d, "Gong")["imagenet"] = [[1000, 1000]]


def _bad_label(d: dict[str, Any]) -> None:
    _entry(d, "Gong")["imagenet"] = [[578, 578, "gong"]]  # off by one


def _bad_duplicate(d: dict[str, Any]) -> None:
    d["classes"].append(copy.deepcopy(_entry(d, "Dog")))


def _bad_missing(d: dict[str, Any]) -> None:
    d["classes"] = [e for e in d["classes"] if e["audioset"] != "Harp"]


def _bad_kind(d: dict[str, Any]) -> None:
    _entry(d, "Harp")["kind"] = "instrument"


def _bad_region(d: dict[str, Any]) -> None:
    _entry(d, "Speech")["region"] = "hands"


def _bad_none_without_why(d: dict[str, Any]) -> None:
    del _entry(d, "Rain")["why"]


def _bad_union(d: dict[str, Any]) -> None:
    _entry(d, "Dog")["imagenet"] = [[151, 200, "Chihuahua ... Tibetan terrier"]]  # fewer breeds than its child 'Bark'


def _bad_overlap(d: dict[str, Any]) -> None:
    _entry(d, "Piano")["imagenet"] = [[579, 579, "grand piano"], [579, 579]]


def _bad_key(d: dict[str, Any]) -> None:
    _entry(d, "Harp")["imagnet"] = [[594, 594]]


def _bad_imagenet_on_human(d: dict[str, Any]) -> None:
    _entry(d, "Speech")["imagenet"] = [[0, 0]]


@pytest.mark.parametrize(("mutate", "message"), [
    (_bad_unknown_name, "'Kazoo' is not in the YAMNet class map"),
    (_bad_index, "index not in 0..999"),
    (_bad_label, "should name 'gown'"),
    (_bad_duplicate, "'Dog' appears twice"),
    (_bad_missing, "not covered, e.g. ['Harp']"),
    (_bad_kind, "kind 'instrument' is not one of"),
    (_bad_region, "('Speech'): a human class needs region"),
    (_bad_none_without_why, "('Rain'): a 'none' class needs a short 'why'"),
    (_bad_union, "does not cover its child 'Bark'"),
    (_bad_overlap, "ImageNet index 579 is listed twice"),
    (_bad_key, "unknown keys ['imagnet']"),
    (_bad_imagenet_on_human, "('Speech'): 'imagenet' is only for kind 'object'"),
])
def test_validation_errors(tmp_path: Path, doc: dict[str, Any], mutate: Any, message: str) -> None:
    d = copy.deepcopy(doc)
    mutate(d)
    with pytest.raises(ConfigError) as info:
        load_sound_map(_write(tmp_path, d))
    assert message in str(info.value)
    assert str(tmp_path) in str(info.value)


def test_validation_bad_files(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_sound_map(p)
    with pytest.raises(ConfigError, match="version"):
        load_sound_map(LEGACY)  # the old format is not a v2 map
    with pytest.raises(ConfigError, match="not found"):
        load_sound_map(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match=r"class map .* not found"):
        load_sound_map(class_names=tmp_path / "absent.csv")
    with pytest.raises(ConfigError, match="ImageNet-1k has 1000"):
        load_sound_map(imagenet_names=["a", "b"])
    with pytest.raises(ConfigError, match="appears twice"):
        load_sound_map(class_names=["Speech", "Speech"])


def test_explicit_class_names(smap: SoundMap) -> None:
    # class names given as a list: the same map
    again = load_sound_map(class_names=yamnet_names(), imagenet_names=read_imagenet_names())
    assert again.audioset_names == smap.audioset_names and np.array_equal(again.kind, smap.kind)
    assert again.imagenet == smap.imagenet


def test_coco_names_exist_and_every_object_is_visible_somehow(smap: SoundMap) -> None:
    from avloc.methods.avsemantic.mapping import COCO_NAMES

    assert len(COCO_NAMES) == 80 == len(set(COCO_NAMES))
    for i, name in enumerate(smap.audioset_names):
        assert all(0 <= c < 80 for c in smap.coco[i])
        if smap.is_object[i]:
            assert smap.imagenet[i] or smap.coco[i], name
        if smap.is_human[i]:
            assert smap.coco[i] == (COCO_NAMES.index("person"),), name
        if smap.is_none[i]:
            assert not smap.coco[i] and not smap.imagenet[i], name
    dog = smap.index("Dog")
    assert [COCO_NAMES[c] for c in smap.coco[dog]] == ["dog"]
    assert [COCO_NAMES[c] for c in smap.coco[smap.index("Boat, Water vehicle")]] == ["boat"]


def test_coco_entries_are_checked(tmp_path: Path, doc: dict[str, Any]) -> None:
    for value, message in (("dog", "non-empty list"), (["wolf"], "not a COCO-80"), (["dog", "dog"], "twice")):
        bad = copy.deepcopy(doc)
        next(e for e in bad["classes"] if e["audioset"] == "Dog")["coco"] = value
        f = tmp_path / "m.json"
        f.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            load_sound_map(f)


def test_audioset_hierarchy_is_closed_and_matches_the_ontology_facts(smap: SoundMap) -> None:
    """Every parent and child is a YAMNet class; descendants are the transitive closure (a hand-checked
    part of the public ontology); the licence ships beside the file."""
    from avloc.methods.avsemantic.hierarchy import HIERARCHY_FILE, AudioSetHierarchy

    h = AudioSetHierarchy.load(smap.audioset_names)
    doc = json.loads(HIERARCHY_FILE.read_text())
    assert doc["license"] == "CC BY-SA 4.0" and "Gemmeke" in doc["attribution"]
    assert (HIERARCHY_FILE.parent / "LICENSE-audioset-ontology.txt").is_file()
    for parent, kids in doc["children"].items():
        below = set(h.descendants(parent))
        assert set(kids) <= below and parent not in below
        for k in kids:  # closed: a child's descendants are the parent's too
            assert set(h.descendants(k)) <= below
    assert {"Dog", "Bark", "Cat", "Horse"} <= set(h.descendants("Animal"))
    assert {"Boat, Water vehicle", "Car", "Motorcycle"} <= set(h.descendants("Vehicle"))
    assert {"Piano", "Guitar", "Drum kit", "Vibraphone"} <= set(h.descendants("Music"))
    assert {"Hammer", "Sawing"} <= set(h.descendants("Tools"))
    assert set(h.descendants("Mallet percussion")) == {"Marimba, xylophone", "Glockenspiel", "Vibraphone", "Steelpan"}
    assert h.descendants("Bark") == () and "Speech" not in h.descendants("Music")
    with pytest.raises(ConfigError):
        h.descendants("Not a class")
    with pytest.raises(ConfigError, match="not one of"):
        AudioSetHierarchy(("A", "B"), {"A": ("C",)})
