"""The HiRISE data layer: read official folders and zips or plain tiles, merge, split, cache; `core.data.loader`
feeds training (torch, imported from there only: the pages that read data draw without torch)."""
from .cache import TileCache, open_tile_cache
from .dataset import HiriseData, RecordTiles, load_dataset, split_manifest
from .merge import CONFLICT_POLICIES, MergeReport, merge_sources
from .records import AUG_SUFFIXES, DataError, Record, parse_name
from .sources import Source, read_source
from .spec import DataSpec
from .split import SPLIT_MODES, assign_splits, find_leakage
from .summary import format_summary, summarize

__all__ = [
           "AUG_SUFFIXES",
           "CONFLICT_POLICIES",
           "SPLIT_MODES",
           "DataError",
           "DataSpec",
           "HiriseData",
           "MergeReport",
           "Record",
           "RecordTiles",
           "Source",
           "TileCache",
           "assign_splits",
           "find_leakage",
           "format_summary",
           "load_dataset",
           "merge_sources",
           "open_tile_cache",
           "parse_name",
           "read_source",
           "split_manifest",
           "summarize",
]
