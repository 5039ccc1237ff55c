"""`captioner serve` over HTTP, as a client uses it: captions equal to the Python API's, options,
word maps, bad uploads answered with a one-line 4xx while the server goes on, concurrent
requests; and, in-process, the batching and the option checks behind it."""

from __future__ import annotations

import asyncio
import base64
import struct
import subprocess
import sys
import threading
import zlib
from io import BytesIO
from pathlib import Path

import aiohttp
import pytest
from helpers import wait_until
from helpers.serve import LIMIT_MB, Served, call, form, jpeg, request, serving_in_process
from PIL import Image

from captioner.model.decoding import Decoding
from captioner.model.inference import Captioner
from captioner.serve.batching import Batcher
from captioner.serve.captioning import Job, Pass, Upload, load_uploads
from captioner.serve.options import Limits, Options, RequestError, parse_options


def expected(api: Captioner, image: bytes, **options: object) -> list[tuple[str, float]]:
    """The Python API's n-best (caption, score) for the same bytes."""
    result = api.caption(BytesIO(image), **options)[0]
    return [(c.text, c.score) for c in result.captions]


def answered(record: dict) -> list[tuple[str, float]]:
    return [(c["caption"], c["score"]) for c in record["n_best"]]


def test_health_says_what_is_served(server: Served, best: Path) -> None:
    status, answer = request("GET", server.url + "health")
    assert status == 200 and answer["status"] == "ok"
    assert answer["checkpoint"] == str(best) and answer["device"] == "cpu"
    assert answer["limits"]["max_upload_bytes"] == LIMIT_MB * 2**20


def test_caption_is_the_python_apis(server: Served, api: Captioner) -> None:
    image = jpeg(0)
    status, answer = request("POST", server.url + "caption", data=form([("photo.jpg", image)], n_best=2))
    assert status == 200, answer
    (record,) = answer["results"]
    assert record["image"] == "photo.jpg" and "explanation" not in record
    assert record["caption"] == record["n_best"][0]["caption"] and len(record["n_best"]) == 2
    for (text, score), (want_text, want_score) in zip(answered(record), expected(api, image, n_best=2)):
        assert text == want_text and score == pytest.approx(want_score, abs=1e-4)


def test_several_images_options_in_the_query(server: Served, api: Captioner) -> None:
    images = [(f"{n}.jpg", jpeg(n, (200 + 40 * n, 150))) for n in range(3)]
    status, answer = request("POST", server.url + "caption?beam_size=2&n_best=2&length_penalty=0.5",
                             data=form(images))
    assert status == 200, answer
    assert [r["image"] for r in answer["results"]] == ["0.jpg", "1.jpg", "2.jpg"]
    for (_, image), record in zip(images, answer["results"]):
        want = expected(api, image, beam_size=2, n_best=2, length_penalty=0.5)
        assert [text for text, _ in answered(record)] == [text for text, _ in want]


def test_explain_sends_each_words_map(server: Served) -> None:
    status, answer = request("POST", server.url + "caption", data=form([("a.jpg", jpeg(1))], explain="on"))
    assert status == 200, answer
    record = answer["results"][0]
    explanation = record["explanation"]
    assert explanation["words"] == record["caption"].split()
    rows, cols = explanation["grid"]
    assert len(explanation["maps"]) == len(explanation["words"]) == len(explanation["logprobs"])
    for word_map in explanation["maps"]:
        assert len(word_map) == rows and all(len(row) == cols for row in word_map)
        assert all(0.0 <= v <= 1.0 for row in word_map for v in row)
    header, data = explanation["view"].split(",", 1)
    assert header == "data:image/png;base64"
    with Image.open(BytesIO(base64.b64decode(data))) as view:
        assert list(view.size) == explanation["view_size"]


def _huge_png(side: int = 100_000) -> bytes:
    """A PNG that claims side x side pixels in a few dozen bytes: a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


BAD_UPLOADS = [
    ("notes.txt", b"not a picture", 422, "notes.txt: not an image Pillow can read"),
    ("cut.jpg", jpeg(2)[:3000], 422, "cut.jpg: broken or truncated image"),
    ("bomb.png", _huge_png(), 422, "bomb.png: refused"),
    ("empty.jpg", b"", 422, "empty.jpg: empty file"),
    ("big.jpg", b"\xff" * (LIMIT_MB * 2**20 + 1), 413, f"over the {LIMIT_MB} MiB upload limit"),
]


@pytest.mark.parametrize(("name", "content", "status", "message"), BAD_UPLOADS,
                         ids=[row[0] for row in BAD_UPLOADS])
def test_bad_upload_is_a_one_line_4xx(server: Served, name: str, content: bytes, status: int,
                                      message: str) -> None:
    got, answer = request("POST", server.url + "caption", data=form([("fine.jpg", jpeg(3)), (name, content)]))
    assert got == status and list(answer) == ["error"], answer
    assert message in answer["error"] and "\n" not in answer["error"]
    assert request("GET", server.url + "health")[0] == 200  # still serving


def test_an_upload_streamed_without_a_length_is_cut_off(server: Served) -> None:
    async def chunks():  # no Content-Length: the limit must hold while the body streams in
        yield b"\xff" * 2**20
        yield b"\xff" * 2**20
    data = aiohttp.FormData()
    data.add_field("image", chunks(), filename="stream.jpg")
    status, answer = request("POST", server.url + "caption", data=data)
    assert status == 413 and "upload limit" in answer["error"]


@pytest.mark.parametrize(("query", "body", "status", "message"), [
    ("", form([]), 400, "no images"),
    ("?beam_size=two", form([("a.jpg", b"")]), 400, "beam_size: not a whole number: 'two'"),
    ("", form([("a.jpg", jpeg(4))], n_best=4), 400, "n_best=4 needs beam_size >= 4"),
    ("?beam_size=500", form([("a.jpg", jpeg(4))]), 400, "beam_size must be from 1 to 20"),
    ("?beam=2", form([("a.jpg", jpeg(4))]), 400, "unknown option 'beam'"),
    ("?n_best=1", form([("a.jpg", jpeg(4))], n_best=1), 400, "option 'n_best' given twice"),
    ("", b"raw bytes", 415, "multipart/form-data"),
    ("", form([(f"{n}.png", b"x") for n in range(65)]), 413, "more than 64 images"),
])
def test_bad_request_is_a_one_line_4xx(server: Served, query: str, body: object, status: int,
                                       message: str) -> None:
    got, answer = request("POST", server.url + "caption" + query, data=body)
    assert got == status and message in answer["error"], answer


def test_other_paths_methods_and_hosts_answer_json(server: Served) -> None:
    assert request("GET", server.url + "caption") == (405, {"error": "GET /caption: Method Not Allowed"})
    assert request("GET", server.url + "nothing") == (404, {"error": "GET /nothing: Not Found"})
    status, answer = request("GET", server.url + "health", headers={"Host": "attacker.example"})
    assert status == 403 and "attacker.example" in answer["error"]
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):
        assert request("GET", server.url + "health", headers={"Host": host})[0] == 200


def test_ten_concurrent_requests_all_answer(server: Served, api: Captioner) -> None:
    images = [jpeg(10 + n) for n in range(10)]
    options = [{"n_best": 1 + n % 2, "explain": n % 3 == 0} for n in range(10)]

    async def all_at_once() -> list[tuple[int, dict]]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(
                call(session, "POST", server.url + "caption", data=form([(f"{n}.jpg", image)], **opts))
                for n, (image, opts) in enumerate(zip(images, options))))

    answers = asyncio.run(all_at_once())
    want = {n_best: api.caption([BytesIO(image) for image in images], n_best=n_best) for n_best in (1, 2)}
    for n, (status, answer) in enumerate(answers):
        assert status == 200, answer
        (record,) = answer["results"]
        assert record["image"] == f"{n}.jpg" and ("explanation" in record) == options[n]["explain"]
        texts = [c.text for c in want[options[n]["n_best"]][n].captions]
        assert [text for text, _ in answered(record)] == texts


def test_a_taken_port_is_a_one_line_error(server: Served, best: Path, tmp_path: Path) -> None:
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    result = subprocess.run([sys.executable, "-m", "captioner", "serve", "--checkpoint", str(best),
                             "--port", port], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == (f"error: cannot listen on 127.0.0.1:{port}: Address already in use; "
                                     "choose another --port (0: any free one)")


def test_without_the_extra_it_says_what_to_install(best: Path) -> None:
    code = ("import sys; sys.modules['aiohttp'] = None; from captioner.cli import main; "
            f"sys.exit(main(['serve', '--checkpoint', {str(best)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: captioner serve needs the serve extra: "
                                     "pip install 'captioner[serve]' (it adds aiohttp)")


def test_help_does_not_import_the_web_framework() -> None:
    code = ("import sys; from captioner.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'captioner.serve'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


# -- in-process: one pass over several requests, the batcher, the options --------------------------

def test_one_pass_over_requests_with_different_options(api: Captioner) -> None:
    images = [jpeg(20 + n, (120, 90)) for n in range(4)]
    tensors = load_uploads(api, [Upload(f"{n}.jpg", image) for n, image in enumerate(images)])
    options = [Options(Decoding(n_best=2), explain=True)] * 2 + [Options(), Options(Decoding(beam_size=1))]
    results = Pass(api)([Job(tensor, opts) for tensor, opts in zip(tensors, options)])
    settings = [{"n_best": 2}, {"n_best": 2}, {}, {"beam_size": 1}]
    for one, image, setting in zip(results, images, settings):
        assert [c.text for c in one.captions] == [text for text, _ in expected(api, image, **setting)]
    assert [one.explanation is not None for one in results] == [True, True, False, False]
    assert list(results[0].explanation.words) == results[0].captions[0].tokens


def test_a_bad_upload_names_the_file(api: Captioner) -> None:
    with pytest.raises(RequestError, match=r"^b\.png: not an image") as caught:
        load_uploads(api, [Upload("a.jpg", jpeg(5)), Upload("b.png", b"GIF89a?")])
    assert caught.value.status == 422


def _gated(log: list[list[int]], gate: threading.Event, started: threading.Event | None = None):
    """A pass that records its batch, the first held until `gate` opens; -1 fails its pass;
    `started` is set once a pass has begun (on the model's thread, before the gate)."""
    def run(batch: list[int]) -> list[int]:
        if started is not None:
            started.set()
        gate.wait(10)
        log.append(list(batch))
        if -1 in batch:
            raise RuntimeError("out of memory")
        return [x * 10 for x in batch]
    return run


async def _held(started: threading.Event) -> None:
    """Once the first pass has begun on the model's thread (and is held at its gate)."""
    assert await asyncio.to_thread(started.wait, 10), "the first pass did not start"


async def _queued() -> None:
    """The tasks just created run to their first await, which queues their jobs in the batcher
    (`submit` appends before it awaits): one turn of the event loop, which runs tasks in the
    order they were scheduled, this one last. An ordering, not a timed wait."""
    await asyncio.sleep(0)


def test_jobs_arriving_during_a_pass_share_the_next() -> None:
    log: list[list[int]] = []
    gate, started = threading.Event(), threading.Event()

    async def scenario() -> list[list[int]]:
        batcher = Batcher(_gated(log, gate, started), batch_size=4)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([0]))
        await _held(started)  # the first pass has started, alone, and is held
        later = [asyncio.ensure_future(batcher.submit([n])) for n in range(1, 7)]
        await _queued()
        gate.set()
        answers = await asyncio.gather(first, *later)
        await batcher.stop()
        return answers

    assert asyncio.run(scenario()) == [[0], [10], [20], [30], [40], [50], [60]]
    assert log == [[0], [1, 2, 3, 4], [5, 6]]  # at most batch_size images a pass


def test_a_failed_pass_fails_its_jobs_only() -> None:
    log: list[list[int]] = []
    gate, started = threading.Event(), threading.Event()

    async def scenario() -> tuple[list, list[int]]:
        batcher = Batcher(_gated(log, gate, started), batch_size=8)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([1]))
        await _held(started)
        doomed = [asyncio.ensure_future(batcher.submit(x)) for x in ([-1], [2])]
        gone = asyncio.ensure_future(batcher.submit([3]))
        await _queued()  # `gone`'s job is queued: cancelling it now cancels a waiting job
        gone.cancel()  # its requester went away: it is not run
        gate.set()
        outcomes = await asyncio.gather(first, *doomed, return_exceptions=True)
        after = await batcher.submit([4, 5])
        await batcher.stop()
        return outcomes, after

    outcomes, after = asyncio.run(scenario())
    assert outcomes[0] == [10] and [str(x) for x in outcomes[1:]] == ["out of memory"] * 2
    assert after == [40, 50] and log == [[1], [-1, 2], [4, 5]]


def test_a_large_job_shares_its_passes_in_turns() -> None:
    log: list[list[int]] = []
    gate = threading.Event()
    gate.set()

    async def scenario() -> list[list[int]]:
        batcher = Batcher(_gated(log, gate), batch_size=2)
        batcher.start()
        answers = await asyncio.gather(batcher.submit([1, 2, 3, 4, 5]), batcher.submit([6]),
                                       batcher.submit([7, 8, 9]))
        await batcher.stop()
        return answers

    assert asyncio.run(scenario()) == [[10, 20, 30, 40, 50], [60], [70, 80, 90]]
    # One image of each waiting job in turn; a job served with images left goes behind the others.
    assert log == [[1, 6], [7, 2], [8, 3], [9, 4], [5]]


def test_a_one_image_job_is_not_starved_by_many_large_ones() -> None:
    log: list[list[int]] = []
    gate, started = threading.Event(), threading.Event()

    async def scenario() -> None:
        batcher = Batcher(_gated(log, gate, started), batch_size=32)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit([0]))
        await _held(started)  # held: the jobs below queue up meanwhile
        many = [asyncio.ensure_future(batcher.submit(list(range(100 * n, 100 * n + 16))))
                for n in range(1, 11)]
        lone = asyncio.ensure_future(batcher.submit([7]))
        await _queued()
        gate.set()
        await asyncio.gather(first, lone, *many)
        await batcher.stop()

    asyncio.run(scenario())
    # 160 images of ten requests were waiting before it; first come first served, the lone
    # image would wait for five passes of them. In turns, it is in the pass after the one running.
    assert [n for n, batch in enumerate(log) if 7 in batch] == [1]
    assert [len(batch) for batch in log] == [1, 32, 32, 32, 32, 32, 1]  # still shared passes


def test_a_one_image_request_is_answered_among_many_large_ones(api: Captioner) -> None:
    """Over HTTP, in-process: four requests of 16 images, two images a pass; a one-image
    request sent once the passes have begun is answered before any of the four."""
    small = [(f"{n}.jpg", jpeg(40 + n, (48, 36))) for n in range(16)]

    async def scenario(url: str) -> list[str]:
        answered: list[str] = []
        async with aiohttp.ClientSession() as session:
            async def send(name: str, files: list[tuple[str, bytes]]) -> None:
                status, answer = await call(session, "POST", url + "caption", data=form(files))
                assert status == 200 and len(answer["results"]) == len(files), answer
                answered.append(name)

            large = [asyncio.ensure_future(send(f"large {n}", small)) for n in range(4)]
            # The server's counter says the passes have begun; polled off this loop, which
            # goes on sending the large requests meanwhile.
            def begun() -> bool:
                return request("GET", url + "health")[1]["forward_passes"] >= 1
            await asyncio.to_thread(wait_until, begun, 60, "the first forward pass")
            await send("lone", [("lone.jpg", jpeg(60, (48, 36)))])
            await asyncio.gather(*large)
            passes = (await call(session, "GET", url + "health"))[1]["forward_passes"]
        assert passes <= 33, passes  # 65 images, two a pass: batched, not one pass per image
        return answered

    with serving_in_process(api, Limits(batch_size=2)) as url:
        answered = asyncio.run(scenario(url))
    assert answered[0] == "lone", answered  # first come first served, it came last


def test_options_from_fields_and_query() -> None:
    options = parse_options([("beam_size", "5"), ("n_best", " 2 "), ("explain", "ON"),
                             ("length_penalty", "0.7"), ("max_length", "12")])
    assert options == Options(Decoding(beam_size=5, n_best=2, length_penalty=0.7, max_length=12), True)
    assert parse_options([]) == Options(Decoding(), explain=False)
    for pairs, message in [([("explain", "maybe")], "explain: say 1 or 0"),
                           ([("length_penalty", "nan")], "length_penalty: not a number"),
                           ([("max_length", "0")], "max_length must be from 1 to 100")]:
        with pytest.raises(RequestError, match=message):
            parse_options(pairs)
