"""HiRISE Studio core: data, training, evaluation and explanation. Never imports Streamlit."""
