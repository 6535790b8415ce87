"""The model package (``.edgepkg``): the one writer and reader of the format.

A zip archive holding ``manifest.json`` (every artifact's path, kind, size and
sha256, plus the model's interface, quantization and provenance), the
artifacts, and ``manifest.sig``, an Ed25519 signature over the exact manifest
bytes. The format is documented in ``docs/package-format.md``.

Typical use::

    from edge_runtime.package import TrustStore, open_package, write_package

    write_package("m.edgepkg", manifest, {"model.onnx": Path("model.onnx")}, signing_key=key)
    with open_package("m.edgepkg", trust_store=TrustStore.load("/etc/edge/trust")) as pkg:
        pkg.extract("/var/lib/edge/models/m/<sha256>")
"""

from edge_runtime.package._archive import (
    Limits,
    Package,
    PackageInfo,
    file_sha256,
    open_package,
    open_regular_file,
    write_package,
)
from edge_runtime.package._manifest import (
    ARTIFACT_KINDS,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    SIGNATURE_NAME,
    SUPPORTED_SCHEMA_VERSIONS,
    ArtifactEntry,
    Manifest,
    Preprocessing,
    Requirements,
    SelfTest,
    Sparsity,
    TensorSpec,
    decode_manifest_json,
    parse_manifest_bytes,
)
from edge_runtime.package._selftest import load_selftest, make_selftest
from edge_runtime.package._signing import (
    SignatureInfo,
    TrustStore,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)

__all__ = [
    "ARTIFACT_KINDS",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "SIGNATURE_NAME",
    "SUPPORTED_SCHEMA_VERSIONS",
    "ArtifactEntry",
    "Limits",
    "Manifest",
    "Package",
    "PackageInfo",
    "Preprocessing",
    "Requirements",
    "SelfTest",
    "SignatureInfo",
    "Sparsity",
    "TensorSpec",
    "TrustStore",
    "decode_manifest_json",
    "file_sha256",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "load_selftest",
    "make_selftest",
    "open_package",
    "open_regular_file",
    "parse_manifest_bytes",
    "write_package",
]
