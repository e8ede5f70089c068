"""Generate the shipped sample dataset ``flowertune/samples/medical_qa.jsonl``.

The rows are written by the flowertune project (Apache-2.0): small tables of textbook-level
medical facts, each rendered through a few fixed question/answer templates. The answers are
short and phrased the same way across a category, so that a small instruct model (e.g.
SmolLM2-135M-Instruct) measurably lowers its loss on held-out rows after a few dozen LoRA
steps. The layout follows the medical-flashcards data used by FlowerTune::

    {"instruction": "Answer this question truthfully", "input": <question>, "output": <answer>}

This is teaching/test data for the fine-tuning pipeline, not clinical advice.

Regenerate (deterministic, byte-identical)::

    python tools/make_sample_data.py            # writes flowertune/samples/medical_qa.jsonl
    python tools/make_sample_data.py --out X    # writes elsewhere
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

INSTRUCTION = "Answer this question truthfully"
SEED = 20250101
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "flowertune" / "samples" / "medical_qa.jsonl"
MIN_WORDS, MAX_WORDS = 8, 40

# --------------------------------------------------------------------------------------------
# Fact tables
# --------------------------------------------------------------------------------------------

# drug, class (with article), mechanism (verb phrase), key adverse effect
DRUGS = [
    ("metformin", "a biguanide", "lowers hepatic glucose production", "lactic acidosis"),
    (
        "glipizide",
        "a sulfonylurea",
        "closes ATP-sensitive potassium channels in beta cells to release insulin",
        "hypoglycemia",
    ),
    (
        "pioglitazone",
        "a thiazolidinedione",
        "activates PPAR-gamma to increase insulin sensitivity",
        "fluid retention and heart failure",
    ),
    (
        "empagliflozin",
        "an SGLT2 inhibitor",
        "blocks glucose reabsorption in the proximal tubule",
        "genital fungal infections",
    ),
    ("lisinopril", "an ACE inhibitor", "blocks the conversion of angiotensin I to angiotensin II", "a dry cough"),
    ("losartan", "an angiotensin II receptor blocker", "blocks angiotensin II at AT1 receptors", "hyperkalemia"),
    (
        "amlodipine",
        "a dihydropyridine calcium channel blocker",
        "blocks L-type calcium channels in vascular smooth muscle",
        "peripheral edema",
    ),
    ("metoprolol", "a beta-1 selective beta blocker", "blocks beta-1 adrenergic receptors in the heart", "bradycardia"),
    ("furosemide", "a loop diuretic", "inhibits the Na-K-2Cl cotransporter in the thick ascending limb", "hypokalemia"),
    (
        "hydrochlorothiazide",
        "a thiazide diuretic",
        "inhibits the Na-Cl cotransporter in the distal convoluted tubule",
        "hyperuricemia",
    ),
    (
        "spironolactone",
        "a potassium-sparing diuretic",
        "blocks aldosterone at mineralocorticoid receptors",
        "gynecomastia",
    ),
    ("atorvastatin", "a statin", "inhibits HMG-CoA reductase to lower LDL cholesterol", "myopathy"),
    (
        "warfarin",
        "a vitamin K antagonist",
        "inhibits vitamin K epoxide reductase to reduce clotting factor synthesis",
        "bleeding",
    ),
    (
        "heparin",
        "an anticoagulant",
        "activates antithrombin to inactivate thrombin and factor Xa",
        "heparin-induced thrombocytopenia",
    ),
    ("aspirin", "an antiplatelet NSAID", "irreversibly inhibits cyclooxygenase", "gastrointestinal bleeding"),
    ("clopidogrel", "a P2Y12 inhibitor", "irreversibly blocks ADP receptors on platelets", "bleeding"),
    ("ibuprofen", "a nonsteroidal anti-inflammatory drug", "reversibly inhibits COX-1 and COX-2", "peptic ulcers"),
    ("morphine", "an opioid agonist", "activates mu-opioid receptors", "respiratory depression"),
    (
        "omeprazole",
        "a proton pump inhibitor",
        "irreversibly inhibits the H+/K+ ATPase of parietal cells",
        "hypomagnesemia with long-term use",
    ),
    (
        "amoxicillin",
        "a penicillin antibiotic",
        "binds penicillin-binding proteins to block cell wall synthesis",
        "allergic skin rash",
    ),
    (
        "ceftriaxone",
        "a third-generation cephalosporin",
        "binds penicillin-binding proteins to block cell wall synthesis",
        "biliary sludging",
    ),
    (
        "vancomycin",
        "a glycopeptide antibiotic",
        "binds D-Ala-D-Ala to block cell wall synthesis",
        "a flushing reaction called red man syndrome",
    ),
    (
        "gentamicin",
        "an aminoglycoside antibiotic",
        "binds the 30S ribosomal subunit to block protein synthesis",
        "nephrotoxicity and ototoxicity",
    ),
    (
        "doxycycline",
        "a tetracycline antibiotic",
        "binds the 30S ribosomal subunit to block tRNA attachment",
        "photosensitivity",
    ),
    (
        "azithromycin",
        "a macrolide antibiotic",
        "binds the 50S ribosomal subunit to block translocation",
        "QT prolongation",
    ),
    ("ciprofloxacin", "a fluoroquinolone antibiotic", "inhibits DNA gyrase and topoisomerase IV", "tendon rupture"),
    (
        "metronidazole",
        "a nitroimidazole antimicrobial",
        "forms free radicals that damage DNA in anaerobes",
        "a disulfiram-like reaction with alcohol",
    ),
    ("isoniazid", "an antituberculosis drug", "inhibits mycolic acid synthesis", "peripheral neuropathy"),
    ("rifampin", "a rifamycin antibiotic", "inhibits bacterial DNA-dependent RNA polymerase", "orange-red body fluids"),
    ("acyclovir", "a guanosine analog antiviral", "inhibits viral DNA polymerase", "crystal nephropathy"),
    ("fluoxetine", "a selective serotonin reuptake inhibitor", "blocks serotonin reuptake", "sexual dysfunction"),
    ("haloperidol", "a first-generation antipsychotic", "blocks dopamine D2 receptors", "extrapyramidal symptoms"),
    ("clozapine", "a second-generation antipsychotic", "blocks dopamine and serotonin receptors", "agranulocytosis"),
    ("lorazepam", "a benzodiazepine", "increases the frequency of GABA-A chloride channel opening", "sedation"),
    ("phenytoin", "an antiepileptic drug", "blocks voltage-gated sodium channels", "gingival hyperplasia"),
    ("levodopa", "a dopamine precursor", "is converted to dopamine in the brain", "dyskinesia"),
    ("allopurinol", "a xanthine oxidase inhibitor", "reduces uric acid production", "severe skin rash"),
    ("methotrexate", "an antifolate", "inhibits dihydrofolate reductase", "bone marrow suppression"),
    ("digoxin", "a cardiac glycoside", "inhibits the Na+/K+ ATPase of cardiac myocytes", "yellow-tinted vision"),
    (
        "amiodarone",
        "a class III antiarrhythmic",
        "blocks potassium channels to prolong repolarization",
        "pulmonary fibrosis",
    ),
    ("albuterol", "a short-acting beta-2 agonist", "relaxes bronchial smooth muscle", "tremor"),
    (
        "tamsulosin",
        "an alpha-1 blocker",
        "relaxes smooth muscle in the prostate and bladder neck",
        "orthostatic hypotension",
    ),
    ("alendronate", "a bisphosphonate", "inhibits osteoclast-mediated bone resorption", "esophagitis"),
]

# nutrient, disease (descriptive), classic feature, reverse key (unique disease name or None)
DEFICIENCIES = [
    ("vitamin C", "scurvy, a defect of collagen synthesis", "bleeding gums", "scurvy"),
    ("vitamin D", "rickets in children and osteomalacia in adults", "bowing of the legs in children", "rickets"),
    (
        "thiamine (vitamin B1)",
        "beriberi and Wernicke encephalopathy",
        "confusion, ophthalmoplegia and ataxia",
        "beriberi",
    ),
    (
        "niacin (vitamin B3)",
        "pellagra, a disease of skin, gut and brain",
        "dermatitis, diarrhea and dementia",
        "pellagra",
    ),
    ("riboflavin (vitamin B2)", "inflammation of the lips, mouth and tongue", "angular cheilitis and glossitis", None),
    (
        "pyridoxine (vitamin B6)",
        "peripheral neuropathy, seizures and sideroblastic anemia",
        "neuropathy during isoniazid therapy",
        None,
    ),
    (
        "vitamin B12",
        "megaloblastic anemia with subacute combined degeneration of the spinal cord",
        "loss of vibration sense and position sense",
        "subacute combined degeneration of the spinal cord",
    ),
    (
        "folate",
        "megaloblastic anemia without neurologic signs",
        "hypersegmented neutrophils with a normal methylmalonic acid level",
        None,
    ),
    ("vitamin A", "night blindness and xerophthalmia", "Bitot spots on the conjunctiva", "night blindness"),
    (
        "vitamin K",
        "bleeding from reduced synthesis of clotting factors",
        "a prolonged prothrombin time",
        "hemorrhagic disease of the newborn",
    ),
    ("vitamin E", "hemolytic anemia and spinocerebellar degeneration", "ataxia and loss of proprioception", None),
    (
        "iron",
        "microcytic hypochromic anemia from reduced hemoglobin synthesis",
        "fatigue, pallor and spoon-shaped nails",
        None,
    ),
    (
        "iodine",
        "goiter and hypothyroidism from reduced thyroid hormone synthesis",
        "a diffusely enlarged thyroid gland",
        "endemic goiter",
    ),
    ("zinc", "impaired wound healing and dermatitis", "loss of taste and hair loss", None),
    (
        "dietary protein",
        "kwashiorkor, a form of malnutrition in children",
        "edema and an enlarged fatty liver",
        "kwashiorkor",
    ),
]

# organism, type (with article), disease, unique short disease name for the reverse question
PATHOGENS = [
    ("Mycobacterium tuberculosis", "an acid-fast bacillus", "tuberculosis", "tuberculosis"),
    ("Treponema pallidum", "a spirochete bacterium", "syphilis", "syphilis"),
    ("Borrelia burgdorferi", "a tick-borne spirochete", "Lyme disease", "Lyme disease"),
    ("Plasmodium falciparum", "a protozoan spread by Anopheles mosquitoes", "severe malaria", "falciparum malaria"),
    ("Vibrio cholerae", "a comma-shaped gram-negative bacterium", "cholera with profuse watery diarrhea", "cholera"),
    ("Clostridium tetani", "an anaerobic gram-positive bacillus", "tetanus with muscle spasms", "tetanus"),
    (
        "Clostridium botulinum",
        "an anaerobic gram-positive bacillus",
        "botulism with descending flaccid paralysis",
        "botulism",
    ),
    (
        "Corynebacterium diphtheriae",
        "a gram-positive bacillus",
        "diphtheria with a throat pseudomembrane",
        "diphtheria",
    ),
    ("Bordetella pertussis", "a gram-negative coccobacillus", "whooping cough", "whooping cough"),
    (
        "Neisseria meningitidis",
        "a gram-negative diplococcus",
        "meningococcal meningitis and sepsis",
        "meningococcal meningitis",
    ),
    ("Neisseria gonorrhoeae", "a gram-negative diplococcus", "gonorrhea", "gonorrhea"),
    ("Streptococcus pyogenes", "a group A gram-positive coccus", "strep throat and rheumatic fever", "strep throat"),
    (
        "Helicobacter pylori",
        "a spiral gram-negative bacterium",
        "gastritis and peptic ulcer disease",
        "most peptic ulcers",
    ),
    ("varicella-zoster virus", "a herpesvirus", "chickenpox and shingles", "chickenpox"),
    ("Epstein-Barr virus", "a herpesvirus", "infectious mononucleosis", "infectious mononucleosis"),
    ("measles virus", "a paramyxovirus", "measles with Koplik spots", "measles"),
    ("hepatitis B virus", "a DNA hepadnavirus", "acute and chronic hepatitis B", "hepatitis B"),
    ("human immunodeficiency virus", "a retrovirus", "AIDS by destroying CD4 T cells", "AIDS"),
    ("human papillomavirus", "a DNA papillomavirus", "warts and most cervical cancers", "most cervical cancers"),
    ("rabies virus", "a rhabdovirus", "rabies, a fatal encephalitis", "rabies"),
    ("Candida albicans", "a yeast", "oral thrush and vaginal candidiasis", "oral thrush"),
    ("Giardia lamblia", "a flagellated protozoan", "giardiasis with fatty diarrhea", "giardiasis"),
    ("Toxoplasma gondii", "a protozoan whose definitive host is the cat", "toxoplasmosis", "toxoplasmosis"),
    (
        "Rickettsia rickettsii",
        "a tick-borne intracellular bacterium",
        "Rocky Mountain spotted fever",
        "Rocky Mountain spotted fever",
    ),
    ("Yersinia pestis", "a flea-borne gram-negative bacillus", "plague", "plague"),
    ("Salmonella Typhi", "a gram-negative bacillus", "typhoid fever", "typhoid fever"),
]

# test, normal range (phrase), example (value, verdict), optional population (default "adults")
LABS = [
    ("serum sodium", "about 135-145 mmol/L", ("128 mmol/L", "low")),
    ("serum potassium", "about 3.5-5.0 mmol/L", ("6.2 mmol/L", "high")),
    ("serum chloride", "about 98-106 mmol/L", ("102 mmol/L", "normal")),
    ("serum bicarbonate", "about 22-28 mmol/L", ("15 mmol/L", "low")),
    ("fasting plasma glucose", "about 70-99 mg/dL", ("130 mg/dL", "high")),
    ("hemoglobin A1c", "below 5.7%", ("7.5%", "high")),
    ("serum creatinine", "about 0.6-1.2 mg/dL", ("2.5 mg/dL", "high")),
    ("blood urea nitrogen", "about 7-20 mg/dL", ("14 mg/dL", "normal")),
    ("total serum calcium", "about 8.5-10.5 mg/dL", ("12.5 mg/dL", "high")),
    ("serum magnesium", "about 1.7-2.2 mg/dL", ("1.0 mg/dL", "low")),
    ("serum phosphate", "about 2.5-4.5 mg/dL", ("3.5 mg/dL", "normal")),
    ("arterial blood pH", "about 7.35-7.45", ("7.25", "low")),
    ("arterial PaCO2", "about 35-45 mmHg", ("55 mmHg", "high")),
    ("arterial PaO2 on room air", "about 75-100 mmHg", ("55 mmHg", "low")),
    ("hemoglobin", "about 13.5-17.5 g/dL", ("10 g/dL", "low"), "adult men"),
    ("hemoglobin", "about 12.0-15.5 g/dL", ("13 g/dL", "normal"), "adult women"),
    ("platelet count", "about 150,000-400,000 per microliter", ("50,000 per microliter", "low")),
    ("white blood cell count", "about 4,000-11,000 per microliter", ("18,000 per microliter", "high")),
    ("mean corpuscular volume", "about 80-100 fL", ("70 fL", "low")),
    ("TSH", "about 0.4-4.0 mIU/L", ("10 mIU/L", "high")),
    ("serum albumin", "about 3.5-5.0 g/dL", ("2.5 g/dL", "low")),
    ("total bilirubin", "about 0.1-1.2 mg/dL", ("3.0 mg/dL", "high")),
    ("INR", "about 0.8-1.2", ("1.0", "normal"), "adults not taking anticoagulants"),
    ("serum osmolality", "about 275-295 mOsm/kg", ("310 mOsm/kg", "high")),
    ("resting heart rate", "about 60-100 beats per minute", ("72 beats per minute", "normal")),
    ("resting respiratory rate", "about 12-20 breaths per minute", ("30 breaths per minute", "high")),
]

# hormone, source, main action (verb phrase)
HORMONES = [
    ("insulin", "beta cells of the pancreatic islets", "lowers blood glucose by promoting glucose uptake into cells"),
    ("glucagon", "alpha cells of the pancreatic islets", "raises blood glucose by stimulating glycogenolysis"),
    ("cortisol", "zona fasciculata of the adrenal cortex", "raises blood glucose and suppresses inflammation"),
    (
        "aldosterone",
        "zona glomerulosa of the adrenal cortex",
        "increases renal sodium reabsorption and potassium excretion",
    ),
    (
        "antidiuretic hormone",
        "posterior pituitary after synthesis in the hypothalamus",
        "increases water reabsorption in the renal collecting ducts",
    ),
    (
        "oxytocin",
        "posterior pituitary after synthesis in the hypothalamus",
        "stimulates uterine contraction and milk ejection",
    ),
    ("parathyroid hormone", "parathyroid glands", "raises serum calcium"),
    ("calcitonin", "parafollicular C cells of the thyroid", "lowers serum calcium by inhibiting osteoclasts"),
    ("thyroxine", "follicular cells of the thyroid", "increases the basal metabolic rate"),
    ("thyroid-stimulating hormone", "anterior pituitary", "stimulates thyroid hormone release"),
    ("adrenocorticotropic hormone", "anterior pituitary", "stimulates cortisol release from the adrenal cortex"),
    ("prolactin", "anterior pituitary", "stimulates milk production"),
    ("growth hormone", "anterior pituitary", "stimulates growth, largely through IGF-1 from the liver"),
    ("erythropoietin", "kidneys", "stimulates red blood cell production in the bone marrow"),
    ("melatonin", "pineal gland", "regulates the sleep-wake cycle"),
    ("epinephrine", "adrenal medulla", "raises heart rate and blood glucose in the fight-or-flight response"),
    ("renin", "juxtaglomerular cells of the kidney", "converts angiotensinogen to angiotensin I"),
    ("atrial natriuretic peptide", "cardiac atria", "promotes renal sodium and water excretion"),
    ("gastrin", "G cells of the gastric antrum", "stimulates gastric acid secretion"),
    ("secretin", "S cells of the duodenum", "stimulates bicarbonate secretion from the pancreas"),
    ("cholecystokinin", "I cells of the duodenum", "stimulates gallbladder contraction and pancreatic enzyme release"),
]

# roman numeral, name, function (verb phrase)
CRANIAL_NERVES = [
    ("I", "olfactory", "carries the sense of smell"),
    ("II", "optic", "carries visual information from the retina"),
    ("III", "oculomotor", "moves most extraocular muscles and constricts the pupil"),
    ("IV", "trochlear", "moves the superior oblique muscle of the eye"),
    ("V", "trigeminal", "carries facial sensation and moves the muscles of mastication"),
    ("VI", "abducens", "moves the lateral rectus muscle to abduct the eye"),
    ("VII", "facial", "moves the muscles of facial expression"),
    ("VIII", "vestibulocochlear", "carries hearing and balance"),
    ("IX", "glossopharyngeal", "carries taste from the posterior third of the tongue"),
    ("X", "vagus", "supplies parasympathetic fibers to the heart, lungs and gut"),
    ("XI", "accessory", "moves the sternocleidomastoid and trapezius muscles"),
    ("XII", "hypoglossal", "moves the muscles of the tongue"),
]

# sign, description (noun phrase), condition it suggests
SIGNS = [
    ("Murphy sign", "inspiratory arrest on palpation of the right upper quadrant", "acute cholecystitis"),
    ("Rovsing sign", "right lower quadrant pain when the left lower quadrant is pressed", "acute appendicitis"),
    (
        "McBurney point tenderness",
        "tenderness one-third of the way from the anterior superior iliac spine to the navel",
        "acute appendicitis",
    ),
    ("Kernig sign", "pain and resistance on extending the knee with the hip flexed", "meningitis"),
    ("Brudzinski sign", "involuntary hip and knee flexion when the neck is flexed", "meningitis"),
    ("Chvostek sign", "facial muscle twitching when the facial nerve is tapped", "hypocalcemia"),
    (
        "Trousseau sign of latent tetany",
        "carpal spasm when a blood pressure cuff is inflated on the arm",
        "hypocalcemia",
    ),
    ("Cullen sign", "bruising around the umbilicus", "hemorrhagic pancreatitis"),
    ("Grey Turner sign", "bruising of the flanks", "retroperitoneal hemorrhage"),
    ("Babinski sign", "an upgoing big toe on stroking the sole", "an upper motor neuron lesion"),
    ("Romberg sign", "loss of balance when standing with the eyes closed", "loss of proprioception"),
    ("Tinel sign at the wrist", "tingling in the fingers when the median nerve is tapped", "carpal tunnel syndrome"),
    ("Battle sign", "bruising over the mastoid process", "basilar skull fracture"),
    ("Beck triad", "hypotension, distended neck veins and muffled heart sounds", "cardiac tamponade"),
    ("Charcot triad", "fever, jaundice and right upper quadrant pain", "ascending cholangitis"),
    ("Courvoisier sign", "a palpable nontender gallbladder with jaundice", "pancreatic head cancer"),
    ("Virchow node", "an enlarged left supraclavicular lymph node", "gastric cancer"),
    ("Kussmaul sign", "a paradoxical rise in jugular venous pressure on inspiration", "constrictive pericarditis"),
    ("Kussmaul breathing", "deep, labored breathing", "metabolic acidosis such as diabetic ketoacidosis"),
    ("pulsus paradoxus", "a fall in systolic pressure of more than 10 mmHg on inspiration", "cardiac tamponade"),
]

# poisoning, antidote, mechanism (verb phrase)
ANTIDOTES = [
    ("acetaminophen overdose", "N-acetylcysteine", "replenishes glutathione to detoxify the toxic metabolite"),
    ("opioid overdose", "naloxone", "competitively blocks opioid receptors"),
    ("benzodiazepine overdose", "flumazenil", "competitively blocks the benzodiazepine site on GABA-A receptors"),
    ("heparin overdose", "protamine sulfate", "binds and neutralizes heparin"),
    ("warfarin overdose", "vitamin K", "restores synthesis of clotting factors II, VII, IX and X"),
    (
        "organophosphate poisoning",
        "atropine with pralidoxime",
        "blocks muscarinic receptors while pralidoxime reactivates acetylcholinesterase",
    ),
    ("methanol poisoning", "fomepizole", "inhibits alcohol dehydrogenase"),
    ("digoxin toxicity", "digoxin immune Fab", "binds and inactivates digoxin"),
    ("cyanide poisoning", "hydroxocobalamin", "binds cyanide to form cyanocobalamin"),
    ("iron overdose", "deferoxamine", "chelates free iron"),
    ("carbon monoxide poisoning", "high-flow 100% oxygen", "speeds the removal of carbon monoxide from hemoglobin"),
    ("beta blocker overdose", "glucagon", "raises cardiac cAMP without using beta receptors"),
    ("methemoglobinemia", "methylene blue", "reduces methemoglobin back to hemoglobin"),
    ("malignant hyperthermia", "dantrolene", "blocks calcium release from the sarcoplasmic reticulum"),
    ("anticholinergic toxicity", "physostigmine", "inhibits acetylcholinesterase"),
]

# condition, first-line treatment, reason (clause)
TREATMENTS = [
    ("anaphylaxis", "intramuscular epinephrine", "it reverses bronchospasm and hypotension"),
    ("type 2 diabetes", "metformin with lifestyle changes", "it lowers glucose without causing weight gain"),
    ("hypothyroidism", "levothyroxine", "it replaces the missing thyroid hormone"),
    ("streptococcal pharyngitis", "penicillin or amoxicillin", "group A streptococci remain sensitive to penicillin"),
    ("primary syphilis", "intramuscular benzathine penicillin G", "Treponema pallidum remains sensitive to penicillin"),
    ("early Lyme disease in adults", "oral doxycycline", "it is active against Borrelia burgdorferi"),
    ("absence seizures", "ethosuximide", "it blocks T-type calcium channels in thalamic neurons"),
    ("status epilepticus", "an intravenous benzodiazepine such as lorazepam", "it rapidly enhances GABA inhibition"),
    ("Wernicke encephalopathy", "intravenous thiamine", "it replaces the deficient vitamin B1"),
    ("pernicious anemia", "intramuscular vitamin B12", "oral B12 is poorly absorbed without intrinsic factor"),
    ("scabies", "topical permethrin", "it kills the Sarcoptes mites and their eggs"),
    ("Pneumocystis pneumonia", "trimethoprim-sulfamethoxazole", "it blocks folate synthesis in Pneumocystis"),
    (
        "an acute asthma attack",
        "an inhaled short-acting beta-2 agonist such as albuterol",
        "it rapidly relaxes bronchial smooth muscle",
    ),
    ("adrenal crisis", "intravenous hydrocortisone", "it replaces the missing cortisol"),
    ("hyperkalemia with ECG changes", "intravenous calcium gluconate", "it stabilizes the cardiac cell membrane"),
    ("iron deficiency anemia", "oral iron", "it replenishes the body's iron stores"),
    ("trigeminal neuralgia", "carbamazepine", "it blocks sodium channels in the trigeminal nerve"),
    (
        "tension pneumothorax",
        "immediate needle decompression",
        "it releases trapped air that impairs venous return to the heart",
    ),
    ("ventricular fibrillation", "immediate defibrillation", "it restores an organized heart rhythm"),
    ("hypoglycemia in a conscious patient", "oral glucose", "it raises blood glucose quickly"),
]


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _rows() -> list[tuple[str, str, str]]:
    """All (category, question, answer) rows, in table order."""
    rows: list[tuple[str, str, str]] = []

    def add(cat: str, question: str, answer: str) -> None:
        rows.append((cat, question, answer))

    for drug, cls, mech, adverse in DRUGS:
        d = _cap(drug)
        add("pharmacology", f"What class of drug is {drug}?", f"{d} is {cls}; it {mech}.")
        add("pharmacology", f"What is the mechanism of action of {drug}?", f"{d} {mech}; it is {cls}.")
        add(
            "pharmacology",
            f"What is a key adverse effect of {drug}?",
            f"{d} is {cls}; a key adverse effect is {adverse}.",
        )

    for nutrient, disease, feature, reverse in DEFICIENCIES:
        n = _cap(nutrient)
        add("deficiency", f"What condition results from {nutrient} deficiency?", f"{n} deficiency causes {disease}.")
        add(
            "deficiency",
            f"What is a classic feature of {nutrient} deficiency?",
            f"{n} deficiency causes {disease}; a classic feature is {feature}.",
        )
        if reverse:
            add(
                "deficiency",
                f"Deficiency of which nutrient causes {reverse}?",
                f"{_cap(reverse)} is caused by {nutrient} deficiency; a classic feature is {feature}.",
            )

    for organism, kind, disease, short in PATHOGENS:
        add(
            "microbiology",
            f"What disease is caused by {organism}?",
            f"{_cap(organism)} causes {disease}; it is {kind}.",
        )
        add(
            "microbiology",
            f"Which organism causes {short}?",
            f"The organism that causes {short} is {organism}, {kind}.",
        )

    for test, normal, (value, verdict), *who in LABS:
        pop = who[0] if who else "adults"
        add("lab values", f"What is the normal range for {test} in {pop}?", f"The normal {test} in {pop} is {normal}.")
        if verdict == "normal":
            add(
                "lab values",
                f"Is {value} a normal {test} in {pop}?",
                f"Yes; {value} is within the normal range for {test} in {pop}, {normal}.",
            )
        else:
            add(
                "lab values",
                f"Is {value} a normal {test} in {pop}?",
                f"No; {value} is {verdict}, as the normal {test} in {pop} is {normal}.",
            )

    for hormone, source, action in HORMONES:
        h = _cap(hormone)
        add("physiology", f"Which gland or cells release {hormone}?", f"{h} is released by the {source}; it {action}.")
        add("physiology", f"What is the main action of {hormone}?", f"{h} {action}; it is released by the {source}.")

    for numeral, name, function in CRANIAL_NERVES:
        add(
            "anatomy",
            f"What is cranial nerve {numeral}?",
            f"Cranial nerve {numeral} is the {name} nerve; it {function}.",
        )
        add(
            "anatomy",
            f"What is the function of the {name} nerve?",
            f"The {name} nerve is cranial nerve {numeral}; it {function}.",
        )

    for sign, description, condition in SIGNS:
        add("clinical signs", f"What is {sign}?", f"{_cap(sign)} is {description}; it suggests {condition}.")
        add(
            "clinical signs",
            f"Which condition does {sign} suggest?",
            f"{_cap(sign)} suggests {condition}; it is {description}.",
        )

    for poisoning, antidote, mechanism in ANTIDOTES:
        add(
            "antidotes",
            f"What is the antidote for {poisoning}?",
            f"The antidote for {poisoning} is {antidote}; it {mechanism}.",
        )
        add(
            "antidotes",
            f"How does {antidote} work in {poisoning}?",
            f"{_cap(antidote)} is the antidote for {poisoning}; it {mechanism}.",
        )

    for condition, treatment, reason in TREATMENTS:
        add(
            "first-line treatment",
            f"What is the first-line treatment for {condition}?",
            f"The first-line treatment for {condition} is {treatment}; {reason}.",
        )
        add(
            "first-line treatment",
            f"Why is {treatment} used for {condition}?",
            f"{_cap(treatment)} is the first-line treatment for {condition}; {reason}.",
        )
    return rows


def build_records(seed: int = SEED) -> list[dict[str, str]]:
    """The dataset rows, shuffled deterministically; checks uniqueness and answer length."""
    rows = _rows()
    questions = [q for _, q, _ in rows]
    dupes = sorted({q for q in questions if questions.count(q) > 1})
    if dupes:
        raise ValueError(f"duplicate questions: {dupes}")
    for _, q, a in rows:
        n = len(a.split())
        if not MIN_WORDS <= n <= MAX_WORDS:
            raise ValueError(f"answer of {n} words (want {MIN_WORDS}-{MAX_WORDS}) for {q!r}: {a!r}")
    random.Random(seed).shuffle(rows)
    return [{"instruction": INSTRUCTION, "input": q, "output": a} for _, q, a in rows]


def categories() -> dict[str, int]:
    """Row count per fact category."""
    counts: dict[str, int] = {}
    for cat, _, _ in _rows():
        counts[cat] = counts.get(cat, 0) + 1
    return counts


def generate(out: str | Path = DEFAULT_OUT, seed: int = SEED) -> Path:
    """Write the JSONL file (one object per line, ASCII, '\\n' line endings); returns its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in build_records(seed))
    out.write_bytes(text.encode("ascii"))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output JSONL path (default: the shipped sample)")
    args = parser.parse_args(argv)
    path = generate(args.out)
    print(f"wrote {path} ({sum(categories().values())} rows, {path.stat().st_size} bytes)")
    for cat, n in categories().items():
        print(f"  {cat}: {n}")


if __name__ == "__main__":
    main()
