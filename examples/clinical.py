"""`make demo SCENARIO=clinical`: a vendor's protected model scores a hospital's records.

A hospital holds 1,000,000 synthetic patient records (age band, BMI, HbA1c,
blood pressure, kidney function, chronic conditions, postcode). A model vendor
trained a gradient-boosted classifier on its own synthetic data to find
candidates for a diabetes-drug trial, converted it to ONNX and sealed it. They
meet in a room: the hospital approves one scoring analysis, the vendor approves
that its model may score (and that only the candidates' ids leave). The enclave
scores every record; the hospital receives its candidate list and nothing else;
the vendor never sees a record or a score; the hospital cannot obtain the
weights (no route, no output column, no SQL reads them). Then the vendor
revokes its consent and the next scoring job is refused at once, and the
whole history verifies offline.

Each party uses the Python SDK with its own keystore; each owner's key agent
(`cleanroom keys serve`) runs as its own process and releases its key only to
an attested enclave. This demo uses the *insecure virtual platform*: the
enclave is an ordinary process, so the operator of this machine could read the
records and the model while they are in use. Only AMD SEV-SNP or Intel TDX
hardware closes that gap; the protocol is the same.

Everything is written under ./demo-output, recreated on every run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/ as a package

from examples.clinical_data import (
    FEATURES,
    PATIENTS_RULE,
    PATIENTS_SCHEMA,
    patients,
    vendor_model,
    vendor_training_set,
)

from cleanroom import Client, Party
from cleanroom.attestation import measure
from cleanroom.client import Room
from cleanroom.errors import AuthorizationError, GovernanceError
from cleanroom.models.convert import check_conversion
from cleanroom.models.manifest import ModelManifest
from cleanroom.service.local import free_port, local_service

OUT = Path("demo-output")
RECORDS = int(os.environ.get("CLEANROOM_DEMO_RECORDS", "1000000"))
console = Console()


def step(title: str) -> None:
    console.print()
    console.rule(f"[bold cyan]{title}")


def main() -> None:
    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    console.print(
        Panel.fit(
            "The clinical-trial scenario. A hospital's patient records and a vendor's\n"
            "protected model meet in an attested enclave; the hospital receives its trial\n"
            "candidates only, the vendor never sees a record, nobody sees the weights.\n\n"
            "[bold yellow]This demo runs on the insecure virtual platform: the enclave is a\n"
            "plain process and no hardware protects the records or the model while they are\n"
            "in use. Every member approves that explicitly; real rooms use SEV-SNP or TDX.[/]",
            title="cleanroom demo: clinical",
        )
    )
    step("1. The hospital and the vendor each create an identity, on their own machines")
    parties = {}
    for name in ("hospital", "vendor"):
        parties[name] = Party.create(name)
        parties[name].save(OUT / "keys" / name)
        console.print(f"{name}: {parties[name].fingerprint[:16]}... (keys/{name})")

    step("2. The vendor trains its model on its own synthetic data and converts it to ONNX")
    model, model_bytes = vendor_model()
    sample, _ = vendor_training_set(2_000, seed=5)
    description = check_conversion(model, model_bytes, sample)  # the ONNX model agrees
    manifest = ModelManifest(
        name="trial-candidates",
        version="1.0.0",
        vendor_name="vendor",
        vendor_fingerprint=parties["vendor"].fingerprint,
        features=FEATURES,
        model=description,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    console.print(
        f"GradientBoostingClassifier -> ONNX, {len(model_bytes):,} bytes, "
        f"sha256 {description.sha256[:16]}...; features: {', '.join(FEATURES)}; "
        f"outputs: {', '.join(t.name for t in description.outputs)}"
    )

    step(f"3. The hospital's records: {RECORDS:,} synthetic patients (seeded)")
    records = patients(RECORDS)
    console.print(f"columns: {', '.join(records.column_names)} (postcode may never leave)")

    port = free_port()
    console.print(f"[dim]$ cleanroom serve --data-dir service-data --port {port}[/]")
    with local_service(OUT / "service-data", port=port, log=OUT / "service.log") as url:
        scenario(url, parties, model_bytes, manifest, records)
    console.print(
        Panel.fit(
            f"Done in {time.monotonic() - started:.0f} s. Files are in ./demo-output.\n"
            "On the insecure virtual platform the operator of this machine could\n"
            "have read the records and the model while the enclave ran: fine for\n"
            "a demo, never for real patients or a real vendor's model.",
            title="cleanroom demo: clinical",
        )
    )


def scenario(
    url: str,
    parties: dict[str, Party],
    model_bytes: bytes,
    manifest: ModelManifest,
    records: object,
) -> None:
    clients = {n: Client(url, p, state_dir=OUT / "keys" / n / "state") for n, p in parties.items()}
    with contextlib.ExitStack() as stack:
        for client in clients.values():
            stack.enter_context(client)
        step("4. The hospital creates the room; the vendor joins")
        created = clients["hospital"].create_room(
            "clinical-trial",
            [
                (
                    parties["hospital"].identity_document(),
                    ["data_provider", "result_recipient", "analyst"],
                ),
                (parties["vendor"].identity_document(), ["data_provider"]),
            ],
        )
        rooms = {n: c.room(created.id) for n, c in clients.items()}
        rooms["vendor"].accept()
        console.print(
            f"room {created.id[:16]}...: hospital (data, results, analyst), vendor (model)"
        )

        step("5. Both approve the enclave runtime they trust (its measurement)")
        agree(
            rooms,
            rooms["hospital"].propose_measurements(this_install=True, allow_insecure_virtual=True),
        )
        console.print(f"measurement {measure()[:40]}... (insecure-virtual, approved by both)")
        platforms = ["insecure-virtual"]

        step("6. The vendor seals its model here and publishes it; its key stays at home")
        agree(
            rooms,
            rooms["vendor"].publish_model(
                model_bytes, manifest, name="triage", release_to=platforms
            ),
        )
        console.print("triage: the ONNX bytes, encrypted; the signed manifest names its digest")

        step(f"7. The hospital seals its {RECORDS:,} records and publishes them")
        agree(
            rooms,
            rooms["hospital"].publish_dataset(
                records,
                schema=PATIENTS_SCHEMA,
                name="patients",
                rule=PATIENTS_RULE,
                release_to=platforms,
                progress=False,
            ),
        )
        console.print(
            "patients: custom rule, only analyses the hospital approves; postcode never output"
        )

        step("8. One scoring analysis: the candidates' ids, nothing else")
        pid = rooms["hospital"].propose_scoring(
            "candidates",
            model="triage",
            records="patients",
            id_column="patient_id",
            keep=("label", 1),
            recipients=["hospital"],
        )
        console.print(
            next(p for p in rooms["vendor"].proposals() if p["id"] == pid)["action"]["text"]
        )
        agree(rooms, pid)
        console.print("approved by the vendor (its model may score) and the hospital (its records)")

        with key_agents(url, created.id, parties):
            step("9. The enclave attests, each owner's agent releases its key, the model scores")
            started = time.monotonic()
            job = rooms["hospital"].run_job("candidates")
            view = rooms["hospital"].wait_job(job, timeout=300)
            if view["status"] != "succeeded":
                console.print(f"[red]the job failed: {view['reason']}[/]")
                sys.exit(1)
            console.print(f"scored {RECORDS:,} records in {time.monotonic() - started:.1f} s")
            result = rooms["hospital"].download_result(job, OUT / "candidates.csv")
            console.print(
                f"the hospital decrypted {result['rows']:,} candidates -> candidates.csv "
                f"(columns: {', '.join(c['name'] for c in view['output']['columns'])})"
            )
            attacks(rooms, job)
            no_file_holds(model_bytes)

            step("11. The vendor revokes its consent: the next scoring job is refused at once")
            rooms["vendor"].revoke_consent("triage")
            try:
                rooms["hospital"].run_job("candidates")
                console.print("[red]a job ran after the vendor revoked its consent[/]")
                sys.exit(1)
            except GovernanceError as exc:
                console.print(f"refused: [green]{exc}[/]")

        step("12. Anyone in the room verifies the whole history offline")
        verified = rooms["hospital"].audit.verify()
        console.print(
            f"audit verify: [green]ok[/], {len(verified.statements)} signed entries, "
            "every key release re-checked"
        )


def attacks(rooms: dict[str, Room], job: str) -> None:
    step("10. What the vendor and the hospital cannot do")
    checks = []
    try:
        rooms["vendor"].download_result(job, OUT / "stolen.csv")
        checks.append(("[red]the vendor read the result[/]", False))
    except AuthorizationError as exc:
        checks.append((f"the vendor downloads the candidates: [green]{exc}[/]", True))
    digest = rooms["hospital"].audit.verify().state.datasets["triage"].versions[-1].manifest.sha256
    try:
        rooms["hospital"].download(digest, OUT / "model.parquet")
        checks.append(("[red]the hospital fetched the model's ciphertext[/]", False))
    except AuthorizationError as exc:
        checks.append((f"the hospital fetches the model: [green]{exc}[/]", True))
    try:
        rooms["hospital"].propose_analysis(
            "weights", "SELECT onnx FROM triage", inputs=["triage"], recipients=["hospital"]
        )
        checks.append(("[red]SQL read the model[/]", False))
    except GovernanceError as exc:
        checks.append((f"SQL over the model: [green]{exc}[/]", True))
    try:
        rooms["hospital"].propose_scoring(
            "raw",
            model="triage",
            records="patients",
            id_column="postcode",
            outputs=["probabilities"],
            recipients=["hospital"],
        )
        checks.append(("[red]a scoring analysis output a never-output column[/]", False))
    except GovernanceError as exc:
        checks.append((f"scores keyed by postcode: [green]{exc}[/]", True))
    for line, ok in checks:
        console.print(("refused: " if ok else "") + line)
    if not all(ok for _, ok in checks):
        sys.exit(1)


def no_file_holds(model_bytes: bytes) -> None:
    """No file written here (the service's data, the ledger, the logs, the result)
    holds any 64-byte stretch of the model's plaintext: the weights are only ever
    in the vendor's memory and, decrypted, in the enclave's."""
    windows = {model_bytes[i : i + 64] for i in range(0, len(model_bytes) - 64, 997)}
    files = [p for p in OUT.rglob("*") if p.is_file()]
    found = [p for p in files if any(w in p.read_bytes() for w in windows)]
    if found:
        console.print(f"[red]the model's bytes are in {found[0]}[/]")
        sys.exit(1)
    console.print(
        f"refused: the weights in the clear: [green]none of {len(files)} files here holds "
        f"any of {len(windows)} stretches of them[/] (service data, ledger, logs, result)"
    )


def agree(rooms: dict[str, Room], proposal: str) -> None:
    """Every member who must approve ``proposal`` does."""
    for room in rooms.values():
        view = next(p for p in room.proposals() if p["id"] == proposal)
        me = room.client.party.name
        if view["status"] == "open" and me in view["approvers"] and me not in view["approvals"]:
            room.approve(proposal)


@contextlib.contextmanager
def key_agents(url: str, room: str, parties: dict[str, Party]) -> Iterator[None]:
    """Each owner's key agent, `cleanroom keys serve`, as its own process."""
    agents = []
    for name in parties:
        command = ["keys", "serve", "--room", room, "--poll", "0.2"]
        console.print(f"[dim]$ ({name}) cleanroom {' '.join(command)} &[/]")
        log = (OUT / f"agent-{name}.log").open("w")
        env = {
            **os.environ,
            "CLEANROOM_SERVICE": url,
            "CLEANROOM_KEYSTORE": str(Path("keys") / name),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "cleanroom", *command],
            cwd=OUT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        agents.append((process, log))
    try:
        yield
    finally:
        for process, log in agents:
            process.terminate()
            process.wait(timeout=10)
            log.close()


if __name__ == "__main__":
    main()
