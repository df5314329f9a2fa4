"""Generators: avatar + target landmarks -> image patch and mask."""
