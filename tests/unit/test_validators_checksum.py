"""Image checksums (issue 19, item 2): a placeholder such as ``sha256:...`` is refused with a
readable reason naming the field, never the schema's regular expression."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from provisioner import validators as v
from provisioner.schemas import ProfileCreate, ProfileUpdate

SHA256 = "sha256:" + "ab" * 32
SHA512 = "sha512:" + "0F" * 64


@pytest.mark.parametrize("raw", ["", "  ", SHA256, SHA512, f" {SHA256} "])
def test_accepted(raw: str) -> None:
    assert v.validate_checksum(raw) == (raw if raw.strip() else "")


@pytest.mark.parametrize("raw", ["sha256:...", "sha256:", "sha256:abc", SHA256 + "0", "SHA256:" + "ab" * 32,
                                 "md5:" + "ab" * 16, "ab" * 32, "sha256:" + "zz" * 32, "sha512:" + "ab" * 32])
def test_refused_with_the_expected_form(raw: str) -> None:
    with pytest.raises(ValueError, match=r"not a checksum: .* \(expected sha256:<64 hex digits> or "
                                         r"sha512:<128 hex digits>\)"):
        v.validate_checksum(raw)


@pytest.mark.parametrize(("model", "fields"), [(ProfileCreate, {"name": "debian12"}), (ProfileUpdate, {})])
def test_request_models_name_the_field_not_the_pattern(model: type, fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as exc:
        model(**fields, image_checksum="sha256:...")
    (err,) = exc.value.errors()
    assert err["loc"] == ("image_checksum",)
    assert "not a checksum: 'sha256:...'" in err["msg"] and "pattern" not in err["msg"] and "^" not in err["msg"]
    assert model(**fields, image_checksum=SHA256).image_checksum == SHA256


def test_a_long_value_is_cut_in_the_message() -> None:
    with pytest.raises(ValueError) as exc:
        v.validate_checksum("sha256:" + "a" * 150)
    assert len(str(exc.value)) < 160 and "..." in str(exc.value)
