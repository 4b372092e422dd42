"""Distil a translation model: word-level and sequence-level KD into a smaller encoder-decoder, plus a baseline.

    python recipes/translation.py                      # embedded default: English→Spanish Bible verses, offline
    python recipes/translation.py --dataset_name opus_books --dataset_config_name en-es \
        --source_lang en --target_lang es --teacher_model_name_or_path Helsinki-NLP/opus-mt-en-es
    python recipes/translation.py --train_file pairs.tsv --source_lang en --target_lang de   # columns `en`, `de`
    python recipes/translation.py --eval_split validation --num_train_epochs 4   # choose settings on validation

A teacher that is already a seq2seq model (Marian, BART, T5, an EncoderDecoderModel) is distilled as it is. Any
other checkpoint (by default the packaged MiniLM BERT) becomes the encoder of a BERT-style EncoderDecoderModel
whose decoder writes a SentencePiece vocabulary trained on the target side; that teacher is trained once and
cached. The teacher then translates the training sources once (sequence-level KD, cached), the student learns
from those translations and from the teacher's word distributions, and a baseline of the same shape learns from
the references alone. results.json holds BLEU and chrF (with bootstrap 95 % intervals), params, size and latency.

The recipe's code is nlpkd.recipes.translation (nlpkd/recipes/translation.py).
"""

from nlpkd.recipes.translation import main

if __name__ == "__main__":
    main()
