"""Running trained models: the multi-backend loader (`backends`) and the Python API wrapper (`autoshape`)."""
