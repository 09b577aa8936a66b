"""The jobs the command line runs; they know models only through the Hugging Face interfaces."""
