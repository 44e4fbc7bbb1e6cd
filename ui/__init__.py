"""Streamlit glue shared by the pages: cached loaders, progress bars, error display. Logic stays in core."""
