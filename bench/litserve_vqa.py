"""The LitServe peer of ``python -m service`` for ``bench/serve.py``: the same release, the same
``Predictor.vqa`` and the same image decoding, served by LitServe (``pip install litserve``,
the ``bench`` extra).

    .venv/bin/python bench/litserve_vqa.py --model RELEASE_DIR [--port 8000]
        [--max-batch-size 32] [--batch-timeout-ms 5] [--torch-threads 1]

``POST /vqa`` takes the same multipart body as the service (an ``image`` file, ``question``,
``top_k``) and answers ``{"question", "dataset", "answers": [{"answer", "score"}, ...]}``.
LitServe parses the form in its API-server process and pickles it to one inference worker
(``workers_per_device=1``, ``accelerator="cpu"``), whose loop calls ``decode_request`` on each
item (``service.images.decode_image`` + ``Predictor.preprocess``), then LitServe's own
``batch`` (the list), ``predict`` (one ``Predictor.vqa`` call per batch), ``unbatch`` and
``encode_response``.
``GET /health`` is 200 once the worker is set up. No ``from __future__ import annotations``
here: LitServe reads ``decode_request``'s annotation at run time.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import litserve as ls  # noqa: E402
import torch  # noqa: E402
from fastapi import HTTPException, Request  # noqa: E402

from bench.serve import vqa_dataset  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from service.images import ImageError, decode_image  # noqa: E402
from service.settings import Settings  # noqa: E402

LIMITS = Settings()  # the service's default upload and pixel limits


class VQAAPI(ls.LitAPI):
    def __init__(self, release: Path, torch_threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.torch_threads = torch_threads

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.torch_threads)
        self.predictor = Predictor.from_pretrained(self.release, device="cpu")
        self.dataset = vqa_dataset(self.predictor)  # the service's default head
        self.size = self.predictor.transform.size
        # bench/serve.py reads the batch sizes from here (one line per predict call)
        path = os.environ.get("BENCH_BATCH_LOG")
        self.batch_log = open(path, "a", buffering=1) if path else None  # noqa: SIM115

    def decode_request(self, request: Request) -> tuple[torch.Tensor, str, int]:
        # LitServe hands over the parsed form (its API server ran ``await request.form()``).
        form: Any = request
        upload = form.get("image")
        question = str(form.get("question") or "").strip()
        if upload is None or not hasattr(upload, "file") or not question:
            raise HTTPException(422, "an 'image' file and a 'question' are required")
        upload.file.seek(0)
        data = upload.file.read()
        try:
            image = decode_image(data, max_bytes=LIMITS.max_upload_bytes,
                                 max_pixels=LIMITS.max_image_pixels, target_size=self.size)
        except ImageError as exc:
            raise HTTPException(exc.status, exc.message) from None
        top_k = int(form.get("top_k") or 5)
        return self.predictor.preprocess(image), question, top_k

    # LitAPI's own batch / unbatch fit: a list of tuples is batched as that list, and the
    # list of answers predict returns is unbatched as it is.
    def predict(self, x: Any) -> Any:
        single = not isinstance(x, list)  # max_batch_size=1: LitServe passes the item itself
        items = [x] if single else x
        k = max(item[2] for item in items)
        answers = self.predictor.vqa([item[0] for item in items], [item[1] for item in items],
                                     top_k=k, dataset=self.dataset)
        out = [{"question": item[1], "answers": a[: item[2]]} for a, item in zip(answers, items)]
        if self.batch_log is not None:
            self.batch_log.write(f"{len(items)}\n")
        return out[0] if single else out

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return {"question": output["question"], "dataset": self.dataset,
                "answers": output["answers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="a release directory")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--batch-timeout-ms", type=float, default=5.0)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--timeout-s", type=float, default=30.0,
                    help="request timeout (the service's PYTHIA_REQUEST_TIMEOUT_S default)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.torch_threads))
    torch.set_num_threads(args.torch_threads)
    api = VQAAPI(args.model.resolve(), args.torch_threads, max_batch_size=args.max_batch_size,
                 batch_timeout=args.batch_timeout_ms / 1000.0, api_path="/vqa")
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1,
                          timeout=args.timeout_s)
    server.run(host=args.host, port=args.port, num_api_servers=1, log_level="warning",
               generate_client_file=False, access_log=False)


if __name__ == "__main__":
    main()
