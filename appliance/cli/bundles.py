"""``appliance keys generate``, ``appliance bundle export`` and ``appliance bundle import``:
model bundles between boxes (see README, "Bundles")."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.commands import Client, _client_options, _fail, _state_option, cli
from appliance.core import ApplianceError, StateDir, resolve_state_dir


@cli.group()
def keys() -> None:
    """Ed25519 keys that sign the model bundles this box exports."""


@keys.command("generate")
@_state_option
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="folder of the key pair [default <state>/keys]")
@click.option("--force", is_flag=True, help="replace an existing key pair")
def keys_generate(state_dir: str | None, out: str | None, force: bool) -> None:
    """Make a key pair: bundle_signing.key (private, mode 0600) and bundle_signing.pub.

    A box that should accept this box's bundles trusts the public key: copy
    bundle_signing.pub into that box's <state>/trusted_keys/ (any name ending in .pub).

    Example: appliance keys generate --state-dir /var/lib/appliance
    """
    from appliance.models import generate_keys

    state = StateDir(resolve_state_dir(state_dir))
    folder = Path(out) if out else state.root / "keys"
    try:
        pair = generate_keys(folder, force=force)
    except ApplianceError as err:
        _fail(err.message, 1)
    click.echo(f"key {pair.key_id}\n  private: {pair.private_path} (mode 0600; keep it here)\n"
               f"  public:  {pair.public_path}\n"
               "Trust it on another box: copy the public key into that box's "
               f"<state>/trusted_keys/, e.g.\n  scp {pair.public_path} "
               f"otherbox:/var/lib/appliance/trusted_keys/{pair.key_id}.pub")


@cli.group()
def bundle() -> None:
    """Model bundles: one signed file that another box imports and serves exactly."""


@bundle.command("export")
@click.argument("name")
@click.argument("version", type=int, required=False)
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="the bundle file to write (e.g. machines-v3.bundle)")
@click.option("--key", "key", type=click.Path(dir_okay=False), default=None,
              help="private key [default <state>/keys/bundle_signing.key]")
@click.option("--unsigned", is_flag=True, help="write an unsigned bundle")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="config file [default <state>/appliance.toml when present]")
@_state_option
def bundle_export(name: str, version: int | None, output: str, key: str | None,
                  unsigned: bool, config: str | None, state_dir: str | None) -> None:
    """Write version VERSION (default: production) of pipeline NAME as one bundle file:
    model.txt, model.json, the pipeline's config, the lineage, library versions and a
    manifest of SHA-256 digests, signed with this box's key.

    It reads the state directory (the daemon may run). Example:
    appliance bundle export machines 3 -o /mnt/usb/machines-v3.bundle
    """
    import os

    from appliance.cli.commands import load_settings
    from appliance.models import Registry, export_bundle, load_private_key
    from appliance.store import Store

    settings, state = load_settings(state_dir, config)
    if not state.db.exists():
        _fail(f"no appliance state in {state.root} (no {state.db.name})", 1)
    private = None
    if not unsigned:
        try:
            private = load_private_key(Path(key) if key else
                                       state.root / "keys" / "bundle_signing.key")
        except ApplianceError as err:
            _fail(err.message, 1)
    store = Store.open_readonly(state.db)
    try:
        data, exported = export_bundle(store, Registry(state, store), settings, name,
                                       version, private)
    except ApplianceError as err:
        _fail(err.message, 1)
    finally:
        store.close()
    out = Path(output)
    tmp = out.with_name(f".{out.name}.part")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    signed = "unsigned" if private is None else "signed"
    click.echo(f"wrote {out}: {name} v{exported}, {len(data) / 1e6:.2f} MB, {signed}")


@bundle.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--pipeline", default=None,
              help="the pipeline that receives it [default: the bundle's own; required for "
                   "a bare LightGBM model]")
@_client_options
def bundle_import(file: str, pipeline: str | None, url: str | None,
                  state_dir: str | None) -> None:
    """Import FILE (a bundle, or a bare LightGBM model file) into the running daemon.

    It is registered as a candidate with its lineage, then the pipeline's promotion policy
    decides. A refused file registers nothing, and the reason is printed.
    Example: appliance bundle import /mnt/usb/machines-v3.bundle
    """
    from appliance.models import bundle_pipeline

    data = Path(file).read_bytes()
    if pipeline is None:
        try:
            pipeline = bundle_pipeline(data)
        except ApplianceError as err:
            _fail(err.message, 1)
        if pipeline is None:
            _fail(f"{file} is not a bundle: say which pipeline receives it (--pipeline NAME)")
    body = Client(url, state_dir).call(
        "POST", f"/v1/pipelines/{pipeline}/bundles", content=data, timeout=300,
        headers_extra={"Content-Type": "application/octet-stream"})
    click.echo(f"{body['pipeline']} v{body['version']}: {body['stage']} ({body['reason']})")
