"""What keeps an utterance alive when the vendor connection is not: one mechanism shared by every vendor."""
