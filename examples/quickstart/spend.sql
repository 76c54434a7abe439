-- Spend per region and category, over opted-in customers only.
SELECT c.region,
       t.category,
       COUNT(DISTINCT t.customer_id) AS customers,
       SUM(t.amount) AS spend
FROM transactions t
JOIN customers c ON t.customer_id = c.customer_id
WHERE c.opted_in
GROUP BY c.region, t.category
ORDER BY c.region, t.category
