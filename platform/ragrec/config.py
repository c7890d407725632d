"""Typed experiment configuration.

One YAML file per experiment (``configs/*.yaml``) parsed into :class:`RunConfig`; every number of
the methods is a field here with the paper's default. Overrides from the command line use dotted
paths: ``--set retrieval.k=20 --set lora.train_samples=256``.

Unknown keys are an error (``extra="forbid"``) so that a typo in a config never silently falls
back to a default.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


def _admits_bool(tp: Any) -> bool:
    """Whether the type ``tp`` (or any part of it) accepts a boolean."""
    if tp is bool or tp is Any:
        return True
    origin = get_origin(tp)
    if origin is Literal:
        return any(isinstance(a, bool) for a in get_args(tp))
    if origin is Annotated:
        return _admits_bool(get_args(tp)[0])
    return any(_admits_bool(a) for a in get_args(tp))


def _has_bool(v: Any) -> bool:
    return isinstance(v, bool) or (isinstance(v, (list, tuple)) and any(isinstance(x, bool) for x in v))


def _bool_error(v: Any) -> ValueError:
    return ValueError(
        f"{json.dumps(v)} {'is' if isinstance(v, bool) else 'holds'} a boolean where a number is expected; "
        "write a number (YAML reads true/false/yes/no/on/off as booleans)"
    )


class _Strict(BaseModel):
    """Unknown keys, inf/nan floats and booleans in number fields are errors (pydantic would read true as 1)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, v: Any, info: ValidationInfo) -> Any:
        if _has_bool(v) and not _admits_bool(cls.model_fields[info.field_name].annotation):
            raise _bool_error(v)
        return v


# Prompt templates: config field -> (allowed placeholders, required ones); checked when the config loads
# (ragrec.templates: plain {name} placeholders only, filled without str.format).
TEMPLATE_PLACEHOLDERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "description.template": (("title", "genre"), ("title",)),
    "rationale.template": (("history", "target"), ("history", "target")),
    "ur4rec.user_template": (("history",), ("history",)),
    "ur4rec.item_template": (("title", "genre"), ("title", "genre")),
}


def _not_blank(v: str | None, message: str) -> str | None:
    """``v`` unchanged (None too); ``ValueError(message)`` when it is empty or only whitespace."""
    if v is not None and not v.strip():
        raise ValueError(message)
    return v


def _check_template(v: str, where: str) -> str:
    from .templates import check_template

    allowed, required = TEMPLATE_PLACEHOLDERS[where]
    return check_template(v, allowed, required, where)


class GenericColumns(_Strict):
    """Column names of a user's own interactions / items files (the ``generic`` dataset)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    rating: str | None = "rating"
    label: str | None = None
    timestamp: str = "timestamp"
    title: str = "title"
    genres: str | None = Field("genres", description="None: the items file has no genres (e.g. item_id, title only)")
    genres_sep: str = "|"
    split: str | None = Field(
        None,
        description="optional column of the interactions file holding train/valid/test: your own splits "
        "(used by the temporal protocol instead of its calendar windows)",
    )


class SyntheticConfig(_Strict):
    n_users: int = Field(300, ge=1)
    n_items: int = Field(400, ge=1)
    n_genres: int = Field(12, ge=1)
    ratings_per_user: int = Field(40, ge=1)
    seed: int = 0


class TemporalConfig(_Strict):
    """The ``temporal`` protocol (CoLLM / SCoRe): consecutive calendar windows ending at the last timestamp."""

    unit: Literal["month", "day"] = Field("month", description="calendar months (UTC) or days")
    windows: tuple[int, int, int] = Field(
        (10, 5, 5),
        description="train / valid / test window lengths in `unit`s; the last sum(windows) units are "
        "kept (SCoRe ML-1M: the last 20 months, 10/5/5)",
    )

    @field_validator("windows")
    @classmethod
    def _windows(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 0 or v[0] == 0 or v[2] == 0:
            raise ValueError(f"data.temporal.windows must be non-negative with train and test > 0, got {list(v)}")
        return v


class RerankRankerConfig(_Strict):
    """The initial ranker of ``data.rerank.negatives: ranker``: LightGCN trained on the protocol's training
    positives (the other LightGCN settings keep the ``lightgcn`` section's defaults)."""

    dim: int = Field(64, ge=1, description="embedding size of the ranker's LightGCN")
    epochs: int = Field(20, ge=1, description="training epochs of the ranker's LightGCN")
    lr: float = Field(1e-3, gt=0, description="learning rate of the ranker's LightGCN")


class RerankProtocolConfig(_Strict):
    """The ``rerank`` protocol (UR4Rec / KAR / LibRerank): positives only (label 1), each user's positives in
    time order cut 8:1:1 (``data.split``) per user; a sample is (user, the last ``history_len`` positives
    before the target, ``num_candidates`` candidates = the target + negatives the user never interacted
    with), in a seeded random order."""

    history_len: int = Field(
        10,
        ge=1,
        description="last L positives before the target (paper: 10 for DLCM/PRM/SetRank, 150 for GRU4Rec/SASRec)",
    )
    num_candidates: int = Field(100, ge=2, description="candidates per sample: the target + num_candidates-1 negatives")
    negatives: Literal["uniform", "ranker"] = Field(
        "uniform",
        description="uniform: negatives sampled uniformly (seeded) from the items the user never interacted with; "
        "ranker: the top unseen items of an initial ranker (LightGCN), i.e. hard negatives",
    )
    kcore: int = Field(0, ge=0, description="k-core filter on the positives: users and items keep >= k (0 = off)")
    ranker: RerankRankerConfig = Field(
        RerankRankerConfig(), description="negatives: ranker only: the initial ranker (LightGCN) that picks them"
    )


# the datasets `ragrec data fetch` knows, whose folder defaults to $RAGREC_DATA_DIR/<name> (docs/datasets.md)
DATA_DIR_DATASETS = ("ml-100k", "ml-1m", "ml-10m", "bookcrossing", "amazon-2018", "steam", "netflix")

# the categories of the Amazon Review Data (2018): files <Category>_5.json.gz and meta_<Category>.json.gz
AMAZON_2018_CATEGORIES = (
    "AMAZON_FASHION", "All_Beauty", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Books",
    "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics",
    "Gift_Cards", "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Industrial_and_Scientific", "Kindle_Store",
    "Luxury_Beauty", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments", "Office_Products",
    "Patio_Lawn_and_Garden", "Pet_Supplies", "Prime_Pantry", "Software", "Sports_and_Outdoors",
    "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)  # fmt: skip

# data.label_threshold when the config does not set it (label = rating > threshold); 3.0 for every other dataset
DATASET_LABEL_THRESHOLDS = {"bookcrossing": 4.0}  # BookCrossing rates 1..10: 5..10 are positives


def amazon_category_hint(value: str) -> str:
    """``"; did you mean 'Movies_and_TV'?"`` for a misspelt Amazon 2018 category ('' when nothing is close)."""
    import difflib

    def norm(c: str) -> str:
        return "".join(ch for ch in c.lower().replace("&", "and") if ch.isalnum())

    by_norm = {norm(c): c for c in AMAZON_2018_CATEGORIES}
    if norm(value) in by_norm:
        return f"; did you mean {by_norm[norm(value)]!r}?"
    close = difflib.get_close_matches(norm(value), list(by_norm), n=1, cutoff=0.6)
    return f"; did you mean {by_norm[close[0]]!r}?" if close else ""


class DataConfig(_Strict):
    """Which dataset to load and how to turn it into samples."""

    name: Literal[
        "ml-100k", "ml-1m", "ml-10m", "bookcrossing", "amazon-2018", "steam", "netflix", "recbole", "generic",
        "synthetic",
    ] = Field("ml-100k", description="the dataset; docs/datasets.md lists the files each one reads")  # fmt: skip
    path: str | None = Field(
        None,
        description="Folder with the raw files. Default: $RAGREC_DATA_DIR/<name> (every dataset `ragrec data fetch` "
        "knows); recbole: the folder holding <name>.inter (.item, .user) or the .inter file itself.",
    )
    category: str | None = Field(
        None,
        description="amazon-2018 only (required there): the category, as in the file names <category>_5.json.gz "
        "and meta_<category>.json.gz, e.g. Books, Movies_and_TV, Video_Games",
    )
    implicit_zero: Literal["drop", "negative"] = Field(
        "drop",
        description="bookcrossing only: the implicit interactions (Book-Rating 0): drop = leave them out (only the "
        "explicit 1..10 ratings remain); negative = keep them as negatives (label 0, rating 0)",
    )
    protocol: Literal["rallrec", "temporal", "rerank", "full_ranking"] = Field(
        "rallrec",
        description="rallrec: global 80/10/10 time split of all ratings; temporal: calendar windows; rerank: "
        "per-user chronological split of positives, 100-candidate lists (UR4Rec); full_ranking: per-user "
        "random 8:1:1 split of positives (seeded), every unseen item ranked (ER2ALM)",
    )
    temporal: TemporalConfig = TemporalConfig()
    rerank: RerankProtocolConfig = RerankProtocolConfig()
    corpus_file: str | None = Field(
        None,
        description="ER2ALM's knowledge corpus: JSONL or Parquet with doc_id, title, text (None: the dataset's own "
        "metadata and the LLM's descriptions stand in, and the report says so)",
    )
    min_history: int = Field(5, ge=1, description="Drop samples with fewer earlier ratings.")
    max_history: int | None = Field(
        None, description="Keep at most this many most recent history items per sample (None = all)."
    )
    max_users: int | None = Field(None, ge=1, description="keep only users with dense id < N (quick slices for tests)")
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    label_threshold: float = Field(
        3.0, description="label = rating > threshold (not set: 4.0 for bookcrossing, i.e. 5..10 of 10; else 3.0)"
    )
    interactions_file: str | None = Field(None, description="generic: interactions .parquet/.csv")
    items_file: str | None = Field(None, description="generic: items .parquet/.csv")
    users_file: str | None = Field(None, description="generic: optional users .parquet/.csv")
    encoding: str = Field(
        "utf-8", description="generic: text encoding of .csv/.tsv files (e.g. latin-1, cp1252), transcoded to UTF-8"
    )
    separator: str | None = Field(
        None, description="generic: field separator of .csv/.tsv files, one character (None: tab for .tsv, else ',')"
    )
    rating_range: tuple[float, float] | None = Field(
        None, description="generic: plausible [min, max] ratings, others are an error (None: 0 .. 1000)"
    )
    timestamp_unit: Literal["s", "ms"] = Field(
        "s",
        description="generic: unit of numeric timestamps: s (seconds since the epoch) or ms (milliseconds, "
        "converted to seconds)",
    )
    on_duplicate: Literal["drop", "error", "keep"] = Field(
        "drop",
        description="generic: interactions repeating user, item and timestamp: drop = keep the first of exact "
        "duplicates and log how many were dropped (rows that differ otherwise are an error); error = any repeat "
        "is an error naming both lines; keep = keep every row (each becomes its own sample)",
    )
    on_out_of_range: Literal["error", "drop", "keep"] = Field(
        "error",
        description="generic: ratings outside data.rating_range and timestamps after the year 5000 in a file "
        "that is mostly seconds: error (naming the first line), drop (log how many rows were dropped) or "
        "keep (no range check); a file whose timestamps are mostly milliseconds stays an error "
        "(set data.timestamp_unit: ms)",
    )
    columns: GenericColumns = GenericColumns()
    synthetic: SyntheticConfig = SyntheticConfig()

    @model_validator(mode="after")
    def _check_split(self) -> DataConfig:
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError(f"data.split must be three non-negative fractions summing to 1, got {self.split}")
        return self

    @model_validator(mode="after")
    def _dataset_options(self) -> DataConfig:
        """data.category / data.implicit_zero belong to one dataset each; a dataset's own label threshold."""
        if self.name == "amazon-2018":
            if self.category is None:
                raise ValueError(
                    "data.name: amazon-2018 needs data.category, the <category> of the files <category>_5.json.gz "
                    "and meta_<category>.json.gz, e.g. data.category: Movies_and_TV (one of "
                    + ", ".join(AMAZON_2018_CATEGORIES)
                    + ")"
                )
            if self.category not in AMAZON_2018_CATEGORIES:
                raise ValueError(
                    f"data.category {self.category!r} is not an Amazon 2018 category"
                    f"{amazon_category_hint(self.category)} (the categories: {', '.join(AMAZON_2018_CATEGORIES)})"
                )
        elif self.category is not None:
            raise ValueError(
                f"data.category applies to data.name: amazon-2018 only, not {self.name}; remove data.category"
            )
        if self.implicit_zero != "drop" and self.name != "bookcrossing":  # the default survives a dump + reload
            raise ValueError(
                f"data.implicit_zero applies to data.name: bookcrossing only, not {self.name}; "
                "remove data.implicit_zero"
            )
        if "label_threshold" not in self.model_fields_set and self.name in DATASET_LABEL_THRESHOLDS:
            # the dataset's own rating scale; set without validation, so it stays out of model_fields_set
            object.__setattr__(self, "label_threshold", DATASET_LABEL_THRESHOLDS[self.name])
        return self

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown text encoding {v!r}; use e.g. utf-8, latin-1 or cp1252") from None
        return v

    @field_validator("separator")
    @classmethod
    def _one_char_separator(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 1 or v in "\r\n\"'"):
            raise ValueError(f"data.separator must be one character other than a quote or newline, got {v!r}")
        return v

    @field_validator("rating_range")
    @classmethod
    def _ordered_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] > v[1]:
            raise ValueError(f"data.rating_range must be [min, max] with min <= max, got {list(v)}")
        return v

    def resolved_path(self) -> Path | None:
        if self.path:
            return Path(os.path.expandvars(os.path.expanduser(self.path)))
        if self.name in DATA_DIR_DATASETS:
            root = os.environ.get("RAGREC_DATA_DIR")
            if not root:
                raise ValueError(
                    f"data.path is not set and RAGREC_DATA_DIR is empty: point RAGREC_DATA_DIR at the folder "
                    f"holding '{self.name}/' (e.g. RAGREC_DATA_DIR=../shared/data) or run "
                    f"`ragrec data fetch {self.name}`"
                )
            return Path(root) / self.name
        return None


class LLMConfig(_Strict):
    """The LLM used for descriptions, text embeddings and the CTR prediction."""

    model: str = Field("smollm2-135m-instruct", description="registry name, HF id or local path")
    engine: Literal["hf", "vllm"] = "hf"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="auto = float32 on CPU, bfloat16 on GPU; bfloat16 on a CPU without native bf16 (no AVX512-BF16 "
        "or AMX) runs, and is cached, as float32 with a warning: reference bf16 kernels are ~100x slower there",
    )
    device: str = Field("auto", description="auto | cpu | cuda")
    batch_size: int = Field(8, ge=1, description="prompts decoded together (hf: sorted by length, left-padded)")
    prefill_tokens: int | None = Field(
        None,
        ge=1,
        description="hf engine: padded prompt tokens per forward pass. A batch's prompts are read (prefilled, "
        "scored, embedded) in row chunks under this budget, then decoded together; null = 4096 on CPU (its "
        "attention slows down per token past a few thousand), no limit on GPU",
    )
    max_prompt_tokens: int = Field(1024, ge=16, description="prompts are truncated from the left")
    num_gpus_per_actor: float = Field(0.0, ge=0)
    actors: int = Field(
        1,
        ge=0,
        description="Ray Data actor pool size. 0: the stages run in this process (the driver, or a Tune trial) "
        "without Ray Data, the engine kept loaded from one stage to the next: no actor start-up per stage (about "
        "10 s each on 2 CPUs), no parallelism. Same outputs; for small data on a laptop",
    )
    load_in_8bit: bool = Field(False, description="bitsandbytes 8-bit (GPU only)")

    @model_validator(mode="after")
    def _in_process_engine(self) -> LLMConfig:
        if self.actors == 0 and self.engine == "vllm":
            raise ValueError(
                "llm.actors: 0 (in this process) works with llm.engine: hf only; vLLM runs through ray.data.llm "
                "actors: set llm.actors >= 1"
            )
        return self


class DescriptionConfig(_Strict):
    """Step 1: LLM-written item descriptions."""

    enabled: bool = True
    template: str = (
        "Write a concise description of the film {title} of genre {genre}. Cover the plot without "
        "spoilers, its themes, setting, main characters or actors, director, tone and impact. "
        "Use under 80 words."
    )
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)
    block_size: int = Field(64, ge=1, description="items per checkpointed generation block")
    max_items: int | None = Field(None, ge=1, description="describe only the first N items (tests)")

    @field_validator("template")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        return _check_template(v, "description.template")


class EmbeddingConfig(_Strict):
    """Step 2: text embeddings of title and description."""

    model: str | None = Field(None, description="encoder; None = the LLM (mean-pooled last hidden state)")
    pooling: Literal["mean", "last"] = "mean"
    pca_dim: int | None = Field(128, ge=1, description="PCA output dimension (None = keep)")
    batch_size: int = Field(16, ge=1)
    max_tokens: int = Field(256, ge=1)


class LightGCNConfig(_Strict):
    """Step 3: collaborative embeddings."""

    dim: int = Field(64, ge=1)
    num_layers: int = Field(3, ge=1)
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(2048, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    positive_threshold: float | None = Field(
        None, description="only interactions with rating > threshold are graph edges (None = all)"
    )


class ProjectorConfig(_Strict):
    """Step 4: SSL alignment projector (Eq. 5)."""

    hidden_dim: int = Field(256, ge=1)
    epochs: int = Field(50, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    temperature: float = Field(1.0, gt=0)


class RetrievalConfig(_Strict):
    """Steps 5-6: history retrieval and the alpha/beta reranker."""

    k: int = Field(30, ge=1, description="history items in the prompt")
    embedding: Literal["mixed", "text", "colla", "ssl", "concat", "title"] = "mixed"
    strategy: Literal["rerank", "relevance", "recent", "hybrid"] = "rerank"
    alpha: float = Field(2 / 3, ge=0.0, le=1.0)
    beta: float = Field(1.0, ge=0.0)


class PromptConfig(_Strict):
    augmentation: bool = Field(True, description="mixed views: relevance order, time order, recent-K")
    max_title_chars: int = Field(80, ge=1)
    genres: bool = Field(
        False,
        description="not in the papers: name every movie with its genres ('Heat (1995) [Action, Crime, Thriller]')",
    )
    stats: bool = Field(
        False,
        description="not in the papers: state the user's average past rating and the target's average "
        "rating so far (interactions before the sample only) in a line of the prompt",
    )


class LoRAConfig(_Strict):
    """Step 8: instruction tuning."""

    enabled: bool = True
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "v_proj"]
    lr: float = Field(5e-4, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    train_samples: int = Field(8192, ge=1, description="sampled training subset (before augmentation)")
    max_tokens: int = Field(512, ge=1)
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="compute dtype of the forward/backward: bfloat16 = frozen base weights stored in bf16 "
        "(LoRA weights and optimizer stay float32); auto = bfloat16 on a GPU with bf16 or a CPU with "
        "AVX512-BF16/AMX, else float32",
    )
    weight_decay: float = Field(0.01, ge=0)
    schedule: Literal["constant", "linear"] = Field(
        "constant", description="lr schedule: constant, or linear warm-up (warmup share of the steps) then decay to 0"
    )
    warmup: float = Field(0.1, ge=0, lt=1, description="linear schedule: share of the optimizer steps spent warming up")
    max_grad_norm: float | None = Field(None, gt=0, description="clip the LoRA gradients' norm (None: no clipping)")
    loss: Literal["answer", "first_token"] = Field(
        "answer",
        description="cross-entropy on every answer token (+EOS), or on the first (the yes/no that scoring reads)",
    )


ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class SASRecConfig(_Strict):
    """SCoRe step 1: the collaborative model (CRM) over users' training sequences."""

    dim: int = Field(64, ge=1)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(1, ge=1)
    max_len: int = Field(50, ge=2, description="most recent items of a sequence")
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(200, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    eval_negatives: int = Field(100, ge=1, description="sanity metric: leave-one-out with this many sampled negatives")


class UserTextConfig(_Strict):
    """d(H(u)): a user's liked training items written out as text (SCoRe's behaviour documents)."""

    max_items: int = Field(10, ge=1, description="most recent liked items per user document")
    max_title_chars: int = Field(80, ge=1)


class CARConfig(_Strict):
    """SCoRe step 2: the collaborative retriever, a sentence encoder tuned with InfoNCE on SASRec neighbours."""

    encoder: str = Field("minilm-l6", description="sentence-transformers model (reference: mpnet-base)")
    enabled: bool = Field(True, description="False: SCoRe-base, the untuned encoder")
    kc: int = Field(5, ge=1, description="positives: the top-Kc SASRec neighbours of each user")
    temperature: float = Field(0.1, gt=0)
    epochs: int = Field(2, ge=1)
    lr: float = Field(2e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    max_tokens: int = Field(256, ge=1)


class RationaleConfig(_Strict):
    """SCoRe step 3: the LLM's self-assessment of which behaviours would help (prompt P^r)."""

    template: str = (
        "The user has watched the following movies: {history}. However, based on this list alone, it is not "
        "possible to confidently predict whether they would enjoy the movie {target}. What other genres or "
        "characteristics related to their preferences, apart from the given history, could help in making a "
        "more informed decision?"
    )
    pairs: int = Field(256, ge=1, description="(user, item) training pairs assessed (they supervise SARE)")
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)
    block_size: int = Field(64, ge=1)

    @field_validator("template")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        return _check_template(v, "rationale.template")


class SAREConfig(_Strict):
    """SCoRe step 5: the self-assessing reranker, a cross-encoder tuned with InfoNCE on the rationale ranking."""

    model: str = Field("minilm-l6", description="cross-encoder base (reference: bge-reranker-large)")
    enabled: bool = Field(True, description="False: SCoRe-rerank (CAR order, no SARE)")
    k1: int = Field(5, ge=1, description="negatives are sampled from ranks after K1")
    k2: int = Field(3, ge=1, description="negatives per query")
    temperature: float = Field(0.02, gt=0)
    epochs: int = Field(2, ge=1)
    lr: float = Field(2e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    max_tokens: int = Field(384, ge=1)
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="dtype of SARE's reranking pass over every sample's Ke users (training stays float32): auto = "
        "bfloat16 where the hardware runs it natively (AVX512-BF16/AMX CPUs, bf16 GPUs; 2.5x float32 on this "
        "project's CPU, Spearman 0.999 with float32 scores), else float32",
    )


class CIConfig(_Strict):
    """SCoRe steps 4 and 6: which similar users' behaviours go into the prompt (P^s)."""

    retriever: Literal["car", "base", "cf"] = Field(
        "car", description="car: tuned encoder; base: untuned encoder (SCoRe-base); cf: SASRec neighbours (SCoRe-cf)"
    )
    ke: int = Field(10, ge=1, description="users retrieved per target user")
    ks: int = Field(2, ge=0, description="users whose liked items go into the prompt (0: no CI, TALLRec-style)")


class UR4RecConfig(_Strict):
    """UR4Rec: LLM-written user preferences s_u and item knowledge s_i, encoded by a frozen encoder, read by
    a proxy transformer (the retriever) pretrained with L_CL + alpha * L_PIM."""

    user_template: str = Field(
        "Your task is to use some keywords to summarize the user's preference based on historical interactions. "
        "Given a user whose history of watching movies over time is listed below: {history}. Please analyze the "
        "user's preferences on movies about factors like genre, director, actors, time period, country, plot and "
        "style. Please give an analysis that incorporates specific elements from the user's history.",
        description="s_u prompt (paper Eq. 1); {history} = the user's training positives as '\"title\", a genre "
        "movie, N stars' items",
    )
    item_template: str = Field(
        'Your task is to craft a detailed overview of the movie "{title}" ({genre}), covering aspects such '
        "as genre, director, actors, time period, country, plot and style.",
        description="s_i prompt (paper Eq. 3); fields {title}, {genre}",
    )
    user_history_items: int = Field(10, ge=1, description="most recent training positives shown in the s_u prompt")
    max_new_tokens: int = Field(64, ge=1, description="tokens generated per s_u / s_i (the paper's Llama2 wrote ~200)")
    temperature: float = Field(0.0, ge=0, description="0 = greedy (reproducible)")
    block_size: int = Field(64, ge=1, description="prompts per checkpointed generation block")
    max_items: int | None = Field(
        None, ge=1, description="write s_i for the first N items only; the others use their title and genres (tests)"
    )
    encoder: str = Field(
        "minilm-l6", description="frozen text encoder of s_u / s_i, and the retriever's init (paper: BERT-base)"
    )
    aggr_items: int = Field(10, ge=0, description="m: history items whose s_i join e_u in e_aggr (Eq. 5)")
    proxies: int = Field(
        8, ge=1, description="K learnable proxies (paper: 8 for DLCM/PRM/SetRank, 16 for GRU4Rec/SASRec)"
    )
    layers: int = Field(2, ge=1, description="retriever blocks, initialised from the encoder's first layers")
    alpha: float = Field(1.0, ge=0, description="L_pretrain = L_CL + alpha * L_PIM")
    tau: float = Field(0.1, gt=0, description="InfoNCE temperature of L_CL")
    cl_negatives: int = Field(10, ge=1, description="M random negatives per positive (L_CL and L_PIM)")
    use_cl: bool = Field(True, description="False: the w/o CL ablation")
    use_pim: bool = Field(True, description="False: the w/o PIM ablation")
    epochs: int = Field(3, ge=1, description="pretraining epochs")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    max_train_samples: int | None = Field(None, ge=1, description="pretrain on at most N training samples (seeded)")

    @field_validator("user_template", "item_template")
    @classmethod
    def _placeholders(cls, v: str, info: ValidationInfo) -> str:
        return _check_template(v, f"ur4rec.{info.field_name}")


class RerankerConfig(_Strict):
    """The reranking backbones trained on the ``rerank`` protocol (listwise softmax over the candidates)."""

    backbones: list[Literal["dlcm", "prm", "setrank", "gru4rec", "sasrec"]] = Field(
        ["dlcm", "prm", "setrank", "gru4rec", "sasrec"], description="backbones trained and evaluated"
    )
    dim: int = Field(64, ge=1, description="item embedding size")
    heads: int = Field(2, ge=1)
    layers: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(5, ge=1)
    lr: float = Field(1e-3, gt=0, description="paper: 1e-4 for DLCM/PRM/SetRank, 1e-3 for GRU4Rec/SASRec")
    batch_size: int = Field(32, ge=1)
    max_train_samples: int | None = Field(None, ge=1, description="train on at most N training samples (seeded)")


# ER2ALM's sections: its building blocks take these; they join RunConfig with the method (method: er2alm).
ER2ALM_ASPECTS = ("plot_theme", "genre", "visual_sound", "culture_language", "duration", "director")


_FORCE_FORMAT = (
    "labelled lines by construction: the engine writes the answer's labels, the model only their values "
    "(ragrec.llm.structured; small models rarely follow a format); false: free text that the parser repairs"
)


class RAGConfig(_Strict):
    """ER2ALM Eq. 1: passages retrieved per item from the corpus, and the LLM's aspects written from them."""

    enabled: bool = Field(
        True,
        description="False: no retrieval, the LLM writes the aspects from the item's title, year and genres alone "
        "(the LLMRec-style baseline of `ragrec evaluate`)",
    )
    encoder: str = Field("minilm-l6", description="registry text encoder of the corpus chunks and the queries")
    chunk_chars: int = Field(600, ge=50, description="corpus chunk length in characters")
    chunk_overlap: int = Field(100, ge=0, description="characters shared by consecutive chunks")
    top_r: int = Field(3, ge=1, description="passages retrieved per item (query: title, year, genres)")
    max_new_tokens: int = Field(160, ge=1)
    force_format: bool = Field(True, description=_FORCE_FORMAT)
    temperature: float = Field(0.8, ge=0, description="paper: {0.4, 0.8, 1}")
    top_p: float = Field(0.8, gt=0, le=1, description="paper: {0.6, 0.8, 1}")
    block_size: int = Field(64, ge=1)
    max_items: int | None = Field(None, ge=1, description="write aspects for the first N items only (tests)")


class ProfileConfig(_Strict):
    """ER2ALM Eq. 2-3 (Fig. 3): the user analysis hard prompt -> a per-aspect profile and weights w in (0, 1)."""

    max_history_items: int = Field(10, ge=1, description="most recent liked training items in the prompt")
    max_new_tokens: int = Field(200, ge=1)
    force_format: bool = Field(True, description=_FORCE_FORMAT)
    force_weights: bool = Field(
        True,
        description="with force_format: each line ends with a weight that the engine opens ('[weight: 0.') and "
        "the model completes with 1-2 digits (0.1-0.99); false: the weight is left to the model (SmolLM2-135M "
        "writes none, and every user gets uniform weights)",
    )
    temperature: float = Field(0.4, ge=0)
    top_p: float = Field(0.8, gt=0, le=1)
    block_size: int = Field(64, ge=1)
    min_weight: float = Field(0.05, gt=0, lt=1, description="weights are clipped to [min_weight, 1 - min_weight]")


class NoiseConfig(_Strict):
    """ER2ALM Eq. 6-12 (Alg. 1 lines 12-31): reliability of each generated aspect embedding."""

    enabled: bool = Field(True, description="False: the w/o noise control ablation (every aspect kept)")
    hidden: int = Field(128, ge=1, description="hidden size of the edge-weight MLP over (basic, aspect)")
    tau: float = Field(0.5, gt=0, description="Gumbel-sigmoid temperature")
    theta: float = Field(0.4, gt=0, lt=1, description="threshold of reliability (paper: 0.4)")
    bank_size: int = Field(500, ge=1, description="N: retain/abandon sets are consulted once both hold N")
    bias: float = Field(1e-4, gt=0, lt=0.5, description="keeps epsilon off 0 and 1 in the Gumbel noise")
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-3, gt=0)


class AugmentConfig(_Strict):
    """ER2ALM's LLM augmentation: liked / disliked picks among a base model's candidates -> ceil(eta |E|) pairs."""

    enabled: bool = Field(True, description="False: the w/o augmentation ablation")
    eta: float = Field(0.02, ge=0, description="extra training pairs = ceil(eta * |training edges|)")
    candidates: int = Field(10, ge=2, description="base-model candidates shown to the LLM per user")
    order: Literal["ranked", "shuffled"] = Field(
        "ranked",
        description="the candidates' order in the prompt: the base model's (best first) or a seeded random "
        "permutation per user, so a small LLM that answers by position picks no particular rank",
    )
    rounds: int = Field(
        1,
        ge=1,
        description="with order: shuffled, how many permutations the LLM answers; a pick counts only when every "
        "round names the same item (the position-bias filter of LLM rankers)",
    )
    max_new_tokens: int = Field(48, ge=1)
    force_format: bool = Field(True, description=_FORCE_FORMAT)
    temperature: float = Field(0.0, ge=0)
    block_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _rounds_need_shuffling(self):
        if self.rounds > 1 and self.order != "shuffled":
            raise ValueError(
                f"augment.rounds: {self.rounds} rounds of the same ranked order ask the same prompt; set "
                "augment.order: shuffled or augment.rounds: 1"
            )
        return self


class GNNConfig(_Strict):
    """ER2ALM Eq. 13-14: a LightGCN-style GNN over the (augmented) graph whose user / item representations take
    the side embeddings (profile, kept aspects, basic attributes); BPR."""

    dim: int = Field(64, ge=1)
    num_layers: int = Field(3, ge=0, description="propagation layers (0: no propagation, i.e. BPR-MF)")
    epochs: int = Field(200, ge=1, description="training epochs (the most, with patience)")
    lr: float = Field(5e-4, gt=0, description="paper (MovieLens): 2.5e-4 .. 9.5e-4")
    batch_size: int = Field(2048, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int | None = Field(
        None,
        ge=1,
        description="model selection on the validation split (RecBole-style): keep the epoch with the best "
        "validation Recall@20 and stop after this many epochs without a new best; null: train every epoch and "
        "keep the last",
    )
    side: bool = Field(True, description="False: no side embeddings (plain LightGCN / BPR-MF baselines)")
    use_items: bool = Field(True, description="False: the w/o item information ablation")
    use_users: bool = Field(True, description="False: the w/o user information ablation")
    seeds: int = Field(5, ge=1, description="independent runs averaged in the report (paper: 5)")


EVAL_VARIANTS = ("zero_shot", "recent", "rella", "hybrid", "concat", "concat_ssl", "rallrec", "no_aug", "deepfm")


SCORE_EVAL_VARIANTS = ("zero_shot", "no_ci", "score_base", "score_cf", "score_rerank", "score")


UR4REC_EVAL_VARIANTS = ("base", "text", "llm", "ur4rec", "no_cl", "no_pim")

ER2ALM_EVAL_VARIANTS = ("bpr_mf", "lightgcn", "llmrec", "er2alm", "no_item", "no_user", "no_noise", "no_aug")

_METHOD_VARIANTS = {
    "rallrec": EVAL_VARIANTS,
    "score": SCORE_EVAL_VARIANTS,
    "ur4rec": UR4REC_EVAL_VARIANTS,
    "er2alm": ER2ALM_EVAL_VARIANTS,
}


class EvalConfig(_Strict):
    max_test_samples: int | None = Field(10000, ge=1, description="first N test samples (reference: 10,000)")
    max_valid_samples: int | None = Field(1000, ge=1)
    subset: Literal["first", "random"] = Field(
        "first", description="which max_*_samples rows: the first ones (reference) or a seeded random subset"
    )
    bootstrap: int = Field(1000, ge=0)
    variants: list[str] | None = Field(
        None,
        description="`ragrec evaluate` rows (None: all of the method's). rallrec: zero_shot (w/o IT), recent (w/o "
        "retrieval), rella (text retrieval), hybrid, concat (w/o SSL), concat_ssl, rallrec (full), no_aug, "
        "deepfm. score: zero_shot, no_ci (TALLRec-style prompt), score_base, score_cf, score_rerank, "
        "score. ur4rec: base, text (+text: the encoder on titles/genres), llm (+LLM: the encoder on s_u/s_i, w/o "
        "Retr.), ur4rec, no_cl, no_pim (per backbone). []: none but what eval.learning_curve needs (zero-shot); "
        "no sweeps then, and the fusion only when eval.fusion is true",
    )
    proxy_sweep: list[int] = Field(
        [2, 4, 8, 16, 32], description="UR4Rec: proxy counts K of the Figure 4 sweep ([] = none)"
    )
    proxy_sweep_backbones: list[Literal["dlcm", "prm", "setrank", "gru4rec", "sasrec"]] = Field(
        ["prm", "gru4rec"], description="UR4Rec: the backbones of the K sweep (paper: PRM and GRU4Rec)"
    )
    ablation_backbones: list[Literal["dlcm", "prm", "setrank", "gru4rec", "sasrec"]] = Field(
        ["prm", "gru4rec"],
        description="UR4Rec: the backbones that get the Table 3 ablation rows w/o CL and w/o PIM (paper: PRM and "
        "GRU4Rec; each row pretrains its own retriever)",
    )
    k_sweep: list[int] = Field([5, 10, 20, 30], description="`ragrec evaluate` K sweep (full RALLRec)")
    alpha_sweep: list[float] = Field(
        [1 / 2, 2 / 3, 4 / 5], description="`ragrec evaluate` reranker alpha sweep (beta=1)"
    )
    sweep_adapter: Literal["shared", "retrain"] = Field(
        "shared", description="K/alpha sweeps: score with the full variant's adapter (shared) or tune one per point"
    )
    ke_sweep: list[int] = Field([5, 10, 15, 20], description="SCoRe: users retrieved by CAR before SARE (Figure 4)")
    tau_sweep: list[float] = Field(
        [0.2, 0.35, 0.5, 0.65, 0.8], description="ER2ALM: noise.tau values of the Figure 4 sweep ([] = none)"
    )
    bank_sweep: list[int] = Field(
        [200, 350, 500, 650, 800], description="ER2ALM: noise.bank_size N values of the Figure 4 sweep ([] = none)"
    )
    theta_sweep: list[float] = Field(
        [0.2, 0.35, 0.5, 0.65, 0.8], description="ER2ALM: noise.theta values of the Figure 4 sweep ([] = none)"
    )
    eta_sweep: list[float] = Field(
        [0.04, 0.08, 0.12, 0.16, 0.2], description="ER2ALM: augment.eta values of the Figure 4 sweep ([] = none)"
    )
    sweep_seeds: int = Field(
        1, ge=1, description="ER2ALM: GNN seeds per sweep point (the table rows use gnn.seeds; sweeps are many points)"
    )
    ks_sweep: list[int] = Field([1, 2, 3, 4], description="SCoRe: users whose behaviours enter the prompt (Figure 4)")
    deepfm: dict[str, Any] = Field(
        default_factory=dict, description="DeepFM baseline hyper-parameters (ragrec.models.deepfm.DeepFMConfig fields)"
    )
    zero_shot: bool = Field(
        False,
        description="`ragrec run`: also score the untuned model on the same samples (a zero-shot row and the "
        "paired ΔAUC of every row against the tuned model)",
    )
    fusion: bool | None = Field(
        None,
        description="fit the fusion model (logistic regression on the validation split over the LLM's, the "
        "collaborative model's (RALLRec: DeepFM, SCoRe: SASRec) and the item+user baseline's logits; "
        "ragrec.evaluation.fusion): None = in `ragrec evaluate` only, true = also in `ragrec run` "
        "(RALLRec; saved in run.json, `/predict` returns p_fused), false = never",
    )
    learning_curve: list[int] | None = Field(
        None,
        description="`ragrec evaluate` learning curve: lora.train_samples counts (before the mixed-view "
        "augmentation) of the full variant, each scored on the evaluation's test samples, plus the "
        "zero-shot point N=0 (use subset: random and max_test_samples >= 1000)",
    )
    learning_curve_grid: dict[str, list[Any]] | None = Field(
        None,
        description="dotted config fields crossed with every learning-curve point, e.g. "
        "{'lora.lr': [5e-4, 2e-3], 'lora.epochs': [1, 2]} (one curve per combination)",
    )

    @field_validator("learning_curve")
    @classmethod
    def _curve_counts(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (any(n < 1 for n in v) or len(set(v)) != len(v)):
            raise ValueError(
                f"learning_curve: distinct training-sample counts >= 1, got {v} (the zero-shot point "
                f"N=0 is added by itself)"
            )
        return v

    @field_validator("learning_curve_grid")
    @classmethod
    def _curve_grid(cls, v: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        """Every key a dotted config field (not the curve's own lora.train_samples, not eval.*), every value a
        non-empty list of values that field accepts; returns the values as the field parses them."""
        from pydantic import TypeAdapter

        out = {}
        for key, values in (v or {}).items():
            if key == "lora.train_samples" or key.startswith("eval."):
                raise ValueError(
                    f"learning_curve_grid: {key!r} cannot be a grid field (lora.train_samples is the "
                    f"curve's x axis; eval.* fields are the evaluation's)"
                )
            try:
                field = config_field(key)
            except ValueError as e:
                raise ValueError(f"learning_curve_grid: {e}") from None
            if not isinstance(values, list) or not values:
                raise ValueError(f"learning_curve_grid: {key} needs a non-empty list of values, got {values!r}")
            if any(_has_bool(x) for x in values) and not _admits_bool(field.annotation):
                raise ValueError(f"learning_curve_grid: {key}={values}: {_bool_error(values)}")
            tp = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
            adapter = TypeAdapter(tp)
            try:
                out[key] = [adapter.validate_python(x) for x in values]
            except ValidationError as e:
                raise ValueError(f"learning_curve_grid: {key}={values}: {e.errors()[0]['msg']}") from None
        return out or None

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, v: list[str] | None) -> list[str] | None:
        known = sum(_METHOD_VARIANTS.values(), ())
        bad = [x for x in v or [] if x not in known]
        if bad:
            per = "; ".join(f"{m}: {list(names)}" for m, names in _METHOD_VARIANTS.items())
            raise ValueError(f"unknown eval variants {bad}; {per}")
        return v

    def variants_for(self, method: str) -> list[str]:
        """The rows ``ragrec evaluate`` computes for ``method``, in the order given."""
        known = _METHOD_VARIANTS.get(method, EVAL_VARIANTS)
        if self.variants is None:
            return list(known)
        bad = [x for x in self.variants if x not in known]
        if bad:
            raise ValueError(f"eval.variants {bad} do not apply to method '{method}'; choose from {list(known)}")
        return list(self.variants)

    @field_validator("k_sweep", "ke_sweep")
    @classmethod
    def _positive_k(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"k_sweep values must be >= 1, got {v}")
        return v

    @field_validator("alpha_sweep")
    @classmethod
    def _alpha_range(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= a <= 1.0 for a in v):
            raise ValueError(f"alpha_sweep values must lie in [0, 1], got {v}")
        return v

    @field_validator("tau_sweep", "bank_sweep", "theta_sweep", "eta_sweep")
    @classmethod
    def _er2alm_sweep_range(cls, v: list, info: ValidationInfo) -> list:
        ok = {
            "tau_sweep": lambda x: x > 0,
            "bank_sweep": lambda x: x >= 1,
            "theta_sweep": lambda x: 0 < x < 1,
            "eta_sweep": lambda x: x >= 0,
        }[info.field_name]
        rule = {"tau_sweep": "> 0", "bank_sweep": ">= 1", "theta_sweep": "in (0, 1)", "eta_sweep": ">= 0"}
        if not all(ok(x) for x in v):
            raise ValueError(f"{info.field_name} values must be {rule[info.field_name]}, got {v}")
        return v


class ServeConfig(_Strict):
    """``ragrec serve`` / ``serve/config.yaml`` ``args`` (not a run-config section: a served run keeps its own
    config). Overload: the ingress runs at most ``max_ongoing_requests`` requests per replica and Serve's proxy
    queues ``max_queued_requests`` more; beyond that a request gets 503 with ``Retry-After: retry_after_s``
    (Ray Serve's ``max_queued_requests`` + ``backpressure_config``), never an unbounded queue."""

    batching: bool = Field(True, description="@serve.batch the Predictor's scoring across requests")
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    max_items: int = Field(100, ge=1, description="items per request; more get a 413")
    predictor_cpus: float = 1.0
    predictor_gpus: float = Field(
        0.0, description="GPUs of the Predictor replica; set 1 on a GPU cluster, or Ray hides the GPUs"
    )
    light_cpus: float = Field(0.1, ge=0, description="CPUs of the retriever, reranker and ingress replicas")
    torch_threads: int | None = Field(None, ge=1, description="torch threads of the model replica (None: all cores)")
    max_ongoing_requests: int = Field(64, ge=1, description="requests one ingress replica runs at once")
    max_queued_requests: int = Field(
        64, ge=-1, description="requests queued for the ingress beyond max_ongoing_requests (-1: unbounded)"
    )
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After seconds of the 503 answering an overload")
    max_body_bytes: int = Field(1 << 20, ge=1, description="largest request body; a larger one gets a 413")

    @field_validator("predictor_cpus", "predictor_gpus")
    @classmethod
    def _non_negative(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"predictor_cpus / predictor_gpus must be >= 0, got {v}")
        return v

    @field_validator("max_queued_requests")
    @classmethod
    def _queue(cls, v: int) -> int:
        if v == 0:
            raise ValueError("max_queued_requests must be >= 1, or -1 for an unbounded queue, got 0")
        return v


class RayConfig(_Strict):
    address: str | None = Field(None, description="None: $RAY_ADDRESS, else a local Ray")
    num_cpus: int | None = Field(None, ge=0)
    num_workers: int = Field(
        1,
        ge=0,
        description="Ray Train workers. 0: the stages' trainings run in this process as plain loops, without Ray "
        "Train: no start-up per training (about 8 s each on 2 CPUs), no worker restarts. Same results",
    )
    use_gpu: bool = False
    storage_path: str | None = Field(
        None,
        description="Where Ray Train keeps checkpoints: a local path, or a URI such as s3://bucket/prefix that "
        "every node can reach (required on a multi-node cluster). Each stage checkpoints under "
        "<storage_path>/<stage>/<key>, so a rerun after a crash resumes from it. None: inside the stage's "
        "<key>.partial/ folder in the artifact cache (single-node only)",
    )

    @field_validator("storage_path")
    @classmethod
    def _storage_path(cls, v: str | None) -> str | None:
        return _not_blank(v, "ray.storage_path is empty: give a path or a URI (s3://bucket/prefix), or null")


class TrackingConfig(_Strict):
    """Experiment tracking (``ragrec.tracking``): every ``ragrec run``, ``ragrec evaluate`` and sweep trial logged
    to MLflow or TensorBoard (config, metrics, report, plots). Off by default: MLflow is an optional extra and the
    run folder already holds everything."""

    backend: Literal["none", "mlflow", "tensorboard"] = Field(
        "none",
        description="none: only the run folder; mlflow: an MLflow run per command (rows as nested runs, sweep "
        "trials through Ray Tune's MLflowLoggerCallback; pip install 'ragrec[mlflow]'); tensorboard: event files "
        "(tensorboardX, shipped with Ray Tune; sweep trials through Ray Tune's TBXLoggerCallback)",
    )
    uri: str | None = Field(
        None,
        description="mlflow: tracking URI (http://host:5000, file:/path, or a plain path = local file store; None: "
        "$MLFLOW_TRACKING_URI, else ./mlruns); tensorboard: log-dir root, events go to <uri>/<name>/ (None: the "
        "run folder's tensorboard/)",
    )
    experiment: str | None = Field(
        None, description="MLflow experiment (None: the config's name, or the sweep's name for a sweep)"
    )

    @field_validator("uri")
    @classmethod
    def _non_empty_uri(cls, v: str | None) -> str | None:
        return _not_blank(v, "tracking.uri is empty; leave it out (None: the default location) or give a URI/path")


class RunConfig(_Strict):
    method: Literal["rallrec", "score", "ur4rec", "er2alm"] = "rallrec"
    name: str = "run"
    seed: int = 42
    artifacts_dir: str = Field("artifacts", description="content-addressed cache (local path or s3://...)")
    output_dir: str = Field("runs", description="reports go to <output_dir>/<name>/")
    data: DataConfig = DataConfig()
    llm: LLMConfig = LLMConfig()
    description: DescriptionConfig = DescriptionConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    lightgcn: LightGCNConfig = LightGCNConfig()
    projector: ProjectorConfig = ProjectorConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    prompt: PromptConfig = PromptConfig()
    lora: LoRAConfig = LoRAConfig()
    # SCoRe (method: score)
    sasrec: SASRecConfig = SASRecConfig()
    user_text: UserTextConfig = UserTextConfig()
    car: CARConfig = CARConfig()
    rationale: RationaleConfig = RationaleConfig()
    sare: SAREConfig = SAREConfig()
    ci: CIConfig = CIConfig()
    # UR4Rec (method: ur4rec)
    ur4rec: UR4RecConfig = UR4RecConfig()
    reranker: RerankerConfig = RerankerConfig()
    # ER2ALM (method: er2alm; also reads `description` for the corpus fallback)
    rag: RAGConfig = RAGConfig()
    profile: ProfileConfig = ProfileConfig()
    noise: NoiseConfig = NoiseConfig()
    augment: AugmentConfig = AugmentConfig()
    gnn: GNNConfig = GNNConfig()
    eval: EvalConfig = EvalConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("name")
    @classmethod
    def _plain_folder_name(cls, v: str) -> str:
        if not v.strip() or v == "." or ".." in v or "/" in v or "\\" in v or Path(v).is_absolute():
            raise ValueError(
                f"name {v!r} must be a plain folder name (runs go to <output_dir>/<name>/): "
                "no '/', '\\' or '..'; e.g. name: rallrec_ml100k"
            )
        return v

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the field."""


def config_field(path: str):
    """The pydantic ``FieldInfo`` of a dotted :class:`RunConfig` field (``lora.lr``); ValueError naming the
    path when there is no such field."""
    model: type[BaseModel] = RunConfig
    *sections, last = path.split(".")
    for name in sections:
        f = model.model_fields.get(name)
        if f is None or not (isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)):
            raise ValueError(f"no config field {path!r} ({name!r} is not a config section)")
        model = f.annotation
    if last not in model.model_fields:
        raise ValueError(f"no config field {path!r}")
    return model.model_fields[last]


class _DuplicateKey(yaml.YAMLError):
    """A mapping repeats a key (plain YAML would keep the last value silently)."""

    def __init__(self, key: Any, mark: Any):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.mark, self.problem = key, mark, f"duplicate key {key!r}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects a key repeated within one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark)
                    seen.add(key)
                except TypeError:  # unhashable key: the base loader reports it
                    pass
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader


def _parse_scalar(text: str) -> Any:
    return _load_yaml(text)


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, returning a copy."""
    out = json.loads(json.dumps(raw))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.field=value")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' is not a section")
        try:
            node[parts[-1]] = _parse_scalar(value)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(
                f"override '{item}': the value is not valid YAML ({problem}); write a list as [1, 2], "
                f"a mapping as {{a: 1}}, or quote a string: --set '{key.strip()}=\"...\"'"
            ) from None
    return out


def read_yaml_mapping(p: Path, what: str) -> dict:
    """The top-level mapping of the YAML file ``p``; ConfigError naming the file when it is missing or bad."""
    if not p.is_file():
        raise ConfigError(f"{what} {p} does not exist")
    try:
        raw = _load_yaml(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: the {what} is not UTF-8 text (byte {e.start}); Fix: save it as UTF-8 YAML") from None
    except _DuplicateKey as e:
        raise ConfigError(
            f"{p} line {e.mark.line + 1}: duplicate key '{e.key}'; Fix: keep one '{e.key}' entry per section "
            "(YAML would silently use the last one)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(
            f"{p}{at}: not valid YAML ({problem}); Fix: check the indentation, quotes and brackets there "
            "(a list is [1, 2], a mapping {a: 1}; quote text holding ': ' or '#')"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{p}: the top level must be a mapping of sections, got a {type(raw).__name__}; Fix: write "
            "'section:' lines, e.g. 'retrieval:' followed by indented 'k: 20'"
        )
    return raw


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    raw: dict = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        raw = read_yaml_mapping(Path(path), "config file")
    raw = apply_overrides(raw, overrides)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            at = _where_set(err["loc"], path, overrides)
            lines.append(f"  {loc}{at}: {_error_text(err, loc)}")
        raise ConfigError(f"{where}: invalid config\n" + "\n".join(lines)) from None


def _error_text(err: dict, loc: str) -> str:
    """A pydantic error as a message with its fix: unknown keys list the section's fields (closest first)."""
    msg = str(err["msg"]).removeprefix("Value error, ")
    msg = msg.removeprefix(f"{loc}: ")
    if err["type"] == "extra_forbidden":
        import difflib

        *parents, key = (str(x) for x in err["loc"])
        model: Any = RunConfig
        for name in parents:
            f = getattr(model, "model_fields", {}).get(name)
            model = f.annotation if f is not None else None
        fields = list(getattr(model, "model_fields", {})) if isinstance(model, type) else []
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        section = ".".join(parents) or "the top level"
        return f"unknown field '{key}'; {hint}the fields of {section} are: {', '.join(fields)}"
    return msg


def _where_set(loc: tuple, path: str | os.PathLike | None, overrides: list[str] | None) -> str:
    """Where the value at ``loc`` was given: `` (--set a.b=...)`` or `` (line N)`` of the config file; "" if
    neither is known (a default)."""
    keys = [str(x) for x in loc]
    for item in reversed(overrides or []):
        k = item.split("=", 1)[0].strip().split(".")
        if k[: len(keys)] == keys[: len(k)]:  # the override set this field, or a field inside it
            return f" (--set {item})"
    if path is None:
        return ""
    try:
        node = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return ""
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        match = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key]
        if not match:
            break
        line = match[-1][0].start_mark.line + 1
        node = match[-1][1]
    return f" (line {line})" if line is not None else ""


def config_hash(obj: Any) -> str:
    """Stable short hash of any JSON-able value (pydantic models are dumped first)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
