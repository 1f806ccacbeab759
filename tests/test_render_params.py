"""The EDL's params model: bad values are pydantic errors whose location names the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from handlers.registry import get_handler, handler_info
from handlers.render_edl.crop import Track, segment_crop, window_size
from handlers.render_edl.models import Crop, RenderParams

ISSUE_EXAMPLE: dict[str, Any] = {
    "segments": [
        {"source": "a", "start": 2.0, "end": 6.0},
        {"source": "a", "start": 10.0, "end": 14.0, "speed": 2.0},
    ],
    "crop": {"keyframes": [{"t": 0.0, "x": 0.2}, {"t": 14.0, "x": 0.8}], "ease": "smooth"},
    "overlays": [
        {"type": "text", "text": "GOAL", "start": 0.5, "end": 2.5, "position": "top"},
        {"type": "image", "source": "sources/logo.png", "start": 0, "end": 6,
         "position": "bottom-right"},
    ],
    "output": {"preset": "vertical-916"},
}  # fmt: skip


def error_of(edl: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    with pytest.raises(ValidationError) as err:
        RenderParams.model_validate(edl)
    first = err.value.errors()[0]
    return tuple(first["loc"]), first["msg"]


def seg(**kw: Any) -> dict[str, Any]:
    return {"start": 0, "end": 1, **kw}


def test_the_issue_example_validates_and_dumps_as_the_whole_edl() -> None:
    params = RenderParams.model_validate(ISSUE_EXAMPLE)
    dumped = params.model_dump()
    assert dumped["segments"][1]["speed"] == 2.0
    assert dumped["output"]["preset"] == "vertical-916"
    assert dumped["crop"]["ease"] == "smooth"
    assert params.output.size == (1080, 1920) and params.output.rate == 30
    assert RenderParams.model_validate(dumped) == params  # the manifest's record re-validates


@pytest.mark.parametrize(
    ("edl", "loc", "msg"),
    [
        ({"segments": [seg(), seg(speed=0)]}, ("segments", 1, "speed"), "greater than or equal"),
        ({"segments": [seg(speed=5)]}, ("segments", 0, "speed"), "less than or equal to 4"),
        ({"segments": [seg(start=3, end=2)]}, ("segments", 0), "end must be after start"),
        ({"segments": [seg(start=-1)]}, ("segments", 0, "start"), "greater than or equal"),
        ({"segments": [seg(stop=2)]}, ("segments", 0, "stop"), "Extra inputs"),
        ({"segment": []}, ("segment",), "Extra inputs"),
        ({"crop": {"keyframes": [{"t": 0, "x": 1.5}]}}, ("crop", "keyframes", 0, "x"), "less"),
        ({"crop": {"keyframes": [{"t": 0, "zoom": 0.5}]}}, ("crop", "keyframes", 0, "zoom"), ""),
        ({"crop": {"keyframes": [{"t": 2}, {"t": 1}]}}, ("crop",), "increasing order"),
        ({"crop": {"x": 0.2, "keyframes": [{"t": 0}]}}, ("crop",), "not both"),
        ({"crop": {"ease": "bouncy"}}, ("crop", "ease"), "'linear' or 'smooth'"),
        ({"overlays": [{"type": "video"}]}, ("overlays", 0), "tag"),
        ({"overlays": [{"type": "text", "text": ""}]}, ("overlays", 0, "text", "text"), "least 1"),
        ({"overlays": [{"type": "text", "text": "a", "color": "red;x"}]},
         ("overlays", 0, "text", "color"), "pattern"),
        ({"overlays": [{"type": "image", "source": "x", "start": 2, "end": 1}]},
         ("overlays", 0, "image"), "end must be after start"),
        ({"overlays": [{"type": "image", "source": "x", "opacity": 2}]},
         ("overlays", 0, "image", "opacity"), "less"),
        ({"output": {"preset": "cinema"}}, ("output", "preset"), "vertical-916"),
        ({"output": {"width": 1081}}, ("output", "width"), "even"),
        ({"output": {"fps": 0}}, ("output", "fps"), "greater"),
        ({"audio": "loud"}, ("audio",), "'source' or 'mute'"),
        ({"crossfade_s": 3}, ("crossfade_s",), "less"),
        ({"segments": [seg(), seg()], "crossfade_s": 1.5}, (), "crossfade_s must be shorter"),
    ],
)  # fmt: skip
def test_a_bad_value_names_its_field_path(
    edl: dict[str, Any], loc: tuple[str | int, ...], msg: str
) -> None:
    got_loc, got_msg = error_of(edl)
    assert got_loc == loc
    assert msg in got_msg


def test_referenced_keys_are_the_values_with_a_slash() -> None:
    params = RenderParams.model_validate(
        {**ISSUE_EXAMPLE, "segments": [seg(source="a"), seg(source="inputs/raw/b.mov")],
         "beats": "outputs/highlights/game1.mp4/beats.json"}
    )  # fmt: skip
    handler = get_handler("render")
    assert handler.referenced_keys(params) == [  # type: ignore[attr-defined]
        "inputs/raw/b.mov",
        "sources/logo.png",
        "outputs/highlights/game1.mp4/beats.json",
    ]


def test_render_describes_itself_as_a_job_files_only_route() -> None:
    info = handler_info("render")
    assert info.sources == "many" and info.job_files_only
    assert info.default_routes == {"render": {}} and info.modal_image == "ffmpeg"


def test_window_size_has_the_output_shape() -> None:
    assert window_size((1920, 1080), (1080, 1920), 1) == (606, 1080)
    assert window_size((1920, 1080), (1080, 1920), 2) == (302, 540)
    assert window_size((1080, 1920), (1920, 1080), 1) == (1080, 606)
    assert window_size((1920, 1080), (1920, 1080), 1) == (1920, 1080)


def test_keyframes_outside_a_segment_clamp_to_its_ends() -> None:
    crop = Crop.model_validate(
        {"keyframes": [{"t": 0, "x": 0}, {"t": 1, "x": 0.1}, {"t": 10, "x": 1}, {"t": 20, "x": 0}]}
    )
    sc = segment_crop(crop, 4, 6)
    # Only the keyframes around [4, 6] are kept, on the segment's clock.
    assert sc.x.points == ((-3, 0.1), (6, 1.0))
    assert sc.x.at(0) == pytest.approx(0.1 + 0.9 * 3 / 9)
    assert sc.y.constant and sc.y.expr("t") == "0.5"


def test_the_expression_is_the_curve_python_computes() -> None:
    track = Track(((0, 0.2), (2, 0.8), (3, 0.5)), smooth=True)
    expr = track.expr("t")
    for t in (-1, 0, 0.5, 1, 1.9, 2, 2.5, 3, 4):
        # The ffmpeg expression language is close enough to Python for if/lt here.
        py = expr.replace("if(", "_if(").replace("lt(", "_lt(")
        value = eval(py, {"_if": lambda c, a, b: a if c else b, "_lt": lambda a, b: a < b, "t": t})
        assert value == pytest.approx(track.at(t))
    assert track.at(1) == pytest.approx(0.5)  # smoothstep is symmetric about the middle
    assert track.at(0.5) < 0.2 + 0.6 * 0.25  # and slow at the start


def test_the_recorded_edl_is_json() -> None:
    dumped = json.loads(json.dumps(RenderParams.model_validate(ISSUE_EXAMPLE).model_dump()))
    assert dumped["overlays"][1]["source"] == "sources/logo.png"
    assert RenderParams.model_validate(dumped).model_dump() == dumped
