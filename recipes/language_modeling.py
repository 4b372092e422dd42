"""Distil a language model (masked or causal), or run TinyBERT's general distillation of a bare encoder.

    python recipes/language_modeling.py --objective mlm      # embedded default: MiniLM teacher, movie dialogs
    python recipes/language_modeling.py --objective clm      # MiniLM adapted into a causal LM, then distilled
    python recipes/language_modeling.py --objective general  # hidden states + attention into a TinyBERT4 body
    python recipes/language_modeling.py --objective mlm --train_file corpus.txt --block_size 256

`mlm` and `clm` give the teacher a trained LM head first when its checkpoint has none (fine-tuned once, then
reused), distil a student, train a no-KD baseline and report perplexity for all three. `general` distils a bare
student body whose checkpoint initialises the classification recipe's student:

    python recipes/text_classification.py --student_model_name_or_path outputs/language_modeling/general

The recipe's code is nlpkd.recipes.language_modeling (nlpkd/recipes/language_modeling.py).
"""

from nlpkd.recipes.language_modeling import main

if __name__ == "__main__":
    main()
