"""Input and output: frames by number from images, movies and readers;
feature and output tables."""
