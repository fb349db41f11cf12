"""Pipeline recipes: stage 1, stage 2 and the full run, each a plain function over small builders."""
