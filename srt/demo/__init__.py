"""The offline demo: procedurally generated word problems and the end-to-end demo recipe."""
