"The parts of `KnowledgeDistillationCallback`, one module each: `teachers`, `features`, `cache`, `table`."
